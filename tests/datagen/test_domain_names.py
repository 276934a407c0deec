"""One rule matches domain names (midog_d2.constants.domain_index): the loader's domain
labels, the canvases' domain selection and the checkpointer's mapping of the domain head's
rows agree on every spelling."""

import torch
from torch import nn

from midog_d2.checkpoint import DOMAIN_ROWS, MidogCheckpointer
from midog_d2.constants import domain_index
from midog_d2.data.midog import set_domain_labels
from midog_dev.canvas import select_domains

DOMAINS = ["Hamamatsu XR", "Aperio  CS2", "Hamamatsu S360"]
SPELLINGS = [" hamamatsu   xr", "APERIO CS2", "Leica GT450", None, "hamamatsu s360\t"]
WANT = [0, 1, -1, -1, 2]


def test_the_loader_the_canvases_and_the_checkpointer_match_names_alike():
    assert [domain_index(n, DOMAINS) for n in SPELLINGS] == WANT
    dicts = [{"scanner": n} for n in SPELLINGS]
    set_domain_labels(dicts, "scanner", DOMAINS)
    assert [d["domain_label"] for d in dicts] == WANT
    kept = select_domains(dicts, "scanner", DOMAINS)
    assert [d["domain_label"] for d in kept] == [w for w in WANT if w >= 0]
    assert [d["scanner"] for d in select_domains(dicts, "scanner", DOMAINS, keep=False)] == [
        "Leica GT450",
        None,
    ]

    # A checkpoint whose head was trained on the other spellings: rows move by name.
    source = [n for n in SPELLINGS if n is not None]  # 4 rows, in the checkpoint's order
    weight, bias = DOMAIN_ROWS
    old = {weight: torch.arange(4.0)[:, None].repeat(1, 3), bias: torch.arange(4.0)}
    fresh = {weight: torch.full((3, 3), -1.0), bias: torch.full((3,), -1.0)}
    ckpt = MidogCheckpointer(nn.Linear(1, 1), domains=DOMAINS)
    state = dict(old)
    ckpt._map_domain_rows(state, fresh, source)
    # DOMAINS[0] is source row 0, DOMAINS[1] row 1, DOMAINS[2] row 3; "Leica" is dropped
    assert state[bias].tolist() == [0.0, 1.0, 3.0]
    assert state[weight][:, 0].tolist() == [0.0, 1.0, 3.0]
