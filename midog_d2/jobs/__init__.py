"""Jobs users run over many inputs: the whole-slide job behind ``tools/infer_slides.py``
(:mod:`.slide_job`, with its review pages and progress) and ablation studies
(:mod:`.study`)."""
