"""Execute notebooks in place so their saved outputs (tables, figures) are current for the docs site.

Usage: .venv/bin/python .ci/run_nbs.py nbs/02_quantize.ipynb [...]   (no argument: every notebook)
Cells flagged `#| slow` are skipped, as `nbdev_test` skips them; run them by hand when you mean to retrain.
"""
import os, sys, time
from pathlib import Path
from execnb.shell import CaptureShell

def is_slow(cell):
    return any(l.strip().replace(' ', '') in ('#|slow', '#|eval:false') for l in cell.source.splitlines()[:5])

root = Path(__file__).resolve().parent.parent
nbs = [Path(a).resolve() for a in sys.argv[1:]] or sorted((root/'nbs').glob('*.ipynb'))
os.chdir(root/'nbs')
for nb in nbs:
    t = time.time()
    CaptureShell().execute(nb, nb, exc_stop=True, preproc=is_slow)
    print(f'{nb.name}: executed in {time.time()-t:.1f}s')
