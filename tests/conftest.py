"""Shared pytest set-up. The test gate (`make test`, CI) runs hypothesis derandomized, so a result does not
depend on which examples one run happened to draw: a failure reproduces on every machine. To hunt for new
counterexamples, set TQ_NB_EXPLORE=1 (`make test-explore`): hypothesis then draws fresh examples each run."""
import os
from hypothesis import settings

settings.register_profile('gate', derandomize=True, deadline=None, print_blob=True)
settings.register_profile('explore', derandomize=False, deadline=None, print_blob=True)
settings.load_profile('explore' if os.environ.get('TQ_NB_EXPLORE', '').lower() in ('1', 'true', 'yes') else 'gate')


# `make test` runs the tests on both cores (pytest-xdist, `-n 2 --dist loadgroup`), spread test by test, except the
# docs tests (tests/test_docs.py marks itself xdist_group 'docs'): they build `_docs/` in the checkout once.
# settings.ini pins pytest<9: pytest-xdist 3.8 groups by rewriting `item._nodeid`, which pytest 9 no longer reads,
# so under pytest 9 the group is ignored and two workers build the site at the same time.
# Two workers on two cores: each runs torch on one thread (and so do the CLIs the tests spawn, through the
# environment), as the notebooks do; more threads than cores makes every test many times slower.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    import torch
    torch.set_num_threads(1)
