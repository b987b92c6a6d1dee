"""Run every notebook's inline tests (test_eq, test_close, test_fail cells) with nbdev_test, one notebook
per test so pytest's summary counts them. Cells flagged `#| slow` are skipped, as settings.ini says."""
import subprocess, sys
from pathlib import Path
import pytest

root = Path(__file__).resolve().parent.parent
notebooks = sorted((root/'nbs').glob('[0-9]*.ipynb')) + [root/'nbs'/'index.ipynb']

@pytest.mark.parametrize('nb', notebooks, ids=[p.stem for p in notebooks])
def test_notebook(nb):
    nbdev_test = Path(sys.executable).parent/'nbdev_test'
    r = subprocess.run([str(nbdev_test), '--path', str(nb), '--do_print'], cwd=root/'nbs',
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f'{nb.name} failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}'
