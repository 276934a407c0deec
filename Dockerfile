# The MIDOG challenge container (Grand Challenge; MIDOG 2025 track 1's interface): reads the
# ROI(s) in /input/images/histopathology-roi-cropout/ (.tif, .tiff, .mha), writes
# /output/mitotic-figures.json (tools/midog_container.py; README.md, "The MIDOG container").
#
#   mkdir -p docker-model && cp output/my_run/{model_final.pth,model_final.pth.threshold.json,config.yaml} docker-model/
#   docker build -t midog-d2 .
#   docker run --rm --gpus all --network none --memory 16g \
#       -v "$PWD/rois":/input/images/histopathology-roi-cropout:ro -v "$PWD/out":/output midog-d2
#
# The base image's PyTorch must be requirements.txt's (pip then keeps it instead of
# downloading another): pass --build-arg BASE=... for another CUDA.
ARG BASE=pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/app

COPY requirements.txt setup.py ./
RUN python -m pip install -r requirements.txt
# Detectron2's Python sources from PyPI's sal-detectron2 wheel (tagged cp310; the package
# needs none of its compiled ops), as `make venv` installs them; or build it from source.
RUN python -m pip install --target /tmp/d2 --python-version 3.10 --implementation cp \
        --only-binary=:all: --no-deps sal-detectron2==0.7.2 \
    && site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && cp -r /tmp/d2/detectron2 /tmp/d2/*.dist-info "$site"/ && rm -rf /tmp/d2

COPY midog_d2 ./midog_d2
COPY tools ./tools
COPY configs ./configs
RUN python -m pip install --no-deps --no-build-isolation -e . && python -c "import midog_d2"

# The model: its weights, the threshold stored beside them and the config it was trained with.
COPY docker-model/ /opt/app/model/

# Grand Challenge runs the container without network and as a user of its own.
RUN chmod -R a+rX /opt/app
ENTRYPOINT ["python", "tools/midog_container.py", "--config-file", "/opt/app/model/config.yaml", \
            "MODEL.WEIGHTS", "/opt/app/model/model_final.pth"]
