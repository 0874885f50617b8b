"""setup.cfg lists every package of the source tree, so ``pip install .`` ships all of them."""

from __future__ import annotations

import configparser

from conftest import ROOT


def test_every_package_directory_is_listed_in_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for init in (ROOT / "caffe_tucker").rglob("__init__.py")}
    assert found - listed == set(), "setup.cfg [options] packages lacks these"
    assert "caffe_tucker.sparsity" in listed and "caffe_tucker.quantize" in listed
