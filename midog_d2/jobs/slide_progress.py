"""Progress of a slide job on the console: a bar a slide, "[k/N] stem", with its tiles, tiles
per second and the job's estimated time left."""

import time

import numpy as np

from ..inference.slide_predictor import SlidePredictor

__all__ = ["JobProgress", "fmt_eta", "predict_with_progress"]


class JobProgress:
    """The job's estimated time left: the seconds a tile took so far, times the tiles left
    in this slide and, for the slides not started, as many tiles as the slides so far had
    on average."""

    def __init__(self, slides: int):
        self.slides, self.done = slides, 0
        self.tiles_done = self.tiles_past = 0
        self.current_total = 0
        self.start = time.perf_counter()

    def slide_started(self, tiles: int) -> None:
        self.current_total = tiles

    def tiles(self, n: int) -> None:
        self.tiles_done += n

    def slide_done(self) -> None:
        self.done += 1
        self.tiles_past += self.current_total
        self.current_total = 0

    def eta_s(self) -> float:
        if not self.tiles_done:
            return float("nan")
        per_tile = (time.perf_counter() - self.start) / self.tiles_done
        mean_tiles = (self.tiles_past + self.current_total) / (self.done + 1)
        left_here = self.tiles_past + self.current_total - self.tiles_done
        return per_tile * (left_here + mean_tiles * (self.slides - self.done - 1))


def fmt_eta(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def predict_with_progress(
    predictor: SlidePredictor, path: str, desc: str, job: "JobProgress", show: bool = True
):
    """``predictor.predict(path)`` with a bar "[k/N] stem", tiles and tiles/s, and the
    job's ETA (:class:`JobProgress`)."""
    if not show:
        return predictor.predict(path, progress=job.tiles, on_tiles=job.slide_started)
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="tile", dynamic_ncols=True, leave=True)

    def started(n: int) -> None:
        job.slide_started(n)
        bar.total = n
        bar.refresh()

    def advanced(n: int) -> None:
        job.tiles(n)
        bar.set_postfix_str(f"job ETA {fmt_eta(job.eta_s())}", refresh=False)
        bar.update(n)

    try:
        return predictor.predict(path, progress=advanced, on_tiles=started)
    finally:
        bar.close()
