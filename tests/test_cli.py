"""The command line's own commands: --version, `models`, and a --help that loads no imaging library."""

import json
import subprocess
import sys

from mixmicrobleednet import __version__
from mixmicrobleednet.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.strip() == f"mixmicrobleednet {__version__}"


def test_models_lists_the_shipped_models_with_their_channels_and_cards(capsys):
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["phantom-t1-t2-t2s"]["channels"] == ["T1", "T2", "T2S"] and rows["phantom-t2s"]["channels"] == ["T2S"]
    assert all(row["card"] and row["card"].endswith("MODEL_CARD.md") and len(row["sha256"]) == 64 for row in rows.values())


def test_help_loads_no_imaging_library():
    code = ("import sys; from mixmicrobleednet.cli import build_parser; build_parser().format_help(); "
            "import mixmicrobleednet; print(sorted(m for m in ('numpy', 'SimpleITK', 'scipy', 'pandas', 'torch') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
