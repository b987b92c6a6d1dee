"""Properties of tq_nb.report: the verdict rule (symmetry, more caution never makes a finding hold, clear
cases), load_runs/missing_runs agreeing on what exists for any subset of runs on disk, the two-budget helpers
(budget_changes, settled_findings) and the bars of #16 (bar_lines) on any verdicts and accuracies."""
import numpy as np
from hypothesis import given, settings, strategies as st

from tq_nb.experiments import write_json
import pandas as pd

from tq_nb.report import (VERDICTS, bar_lines, budget_changes, load_runs, markdown_table, missing_runs, settled_findings,
                         suite_budget, verdict)

accs = st.lists(st.floats(0, 100, allow_nan=False), min_size=2, max_size=5)
rels = st.sampled_from(['<', '>', '≈'])
MIRROR = {'<': '>', '>': '<', '≈': '≈'}

@given(accs, accs, rels)
def test_verdict_is_one_of_the_labels_and_symmetric(a, b, rel):
    v = verdict(a, b, rel)
    assert v in VERDICTS[:3]
    assert verdict(b, a, MIRROR[rel]) == v

@given(accs, accs, rels, st.floats(0.5, 4), st.floats(0, 3))
def test_more_caution_never_makes_a_finding_hold(a, b, rel, k, extra):
    if verdict(a, b, rel, k=k + extra) == 'holds' and rel != '≈':
        assert verdict(a, b, rel, k=k) == 'holds'
    if verdict(a, b, rel, k=k + extra) == 'holds' and rel == '≈':
        assert verdict(a, b, rel, k=k, margin=1.0 + extra) == 'holds'

@given(st.lists(st.floats(0, 100), min_size=2, max_size=4), st.floats(5, 50))
def test_a_clear_gap_holds(a, gap):
    a = np.array(a)
    assert verdict(a - gap - 2 * np.ptp(a), a, '<', k=1) == 'holds'

def test_one_seed_has_no_spread():
    assert verdict([80.0], [90.0, 91.0], '<') == 'needs 2+ seeds'

@settings(max_examples=25, deadline=None)
@given(st.sets(st.tuples(st.sampled_from(['fp', 'w8', 'bin']), st.integers(0, 2))))
def test_missing_runs_is_the_complement_of_load_runs(tmp_path_factory, have):
    res, tag = tmp_path_factory.mktemp('res'), suite_budget('main')['tag']
    for name, seed in have:
        write_json(res/'wordnet'/tag/name/f'seed{seed}.json',
                   dict(experiment=name, dataset='wordnet', tag=tag, seed=seed, original=None, wall_time=1.0,
                        command='test', summary=dict(test_acc_at_best=0.5, test_acc_last=0.5, best_valid_acc=0.5)))
    runs = load_runs('main', res_dir=res)
    assert set(zip(runs.experiment, runs.seed)) == have
    miss = missing_runs(runs, ['fp', 'w8', 'bin'])
    assert set(zip(miss.experiment, miss.seed)) | have == {(n, s) for n in ('fp', 'w8', 'bin') for s in range(3)}
    assert not set(zip(miss.experiment, miss.seed)) & have

@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
def test_markdown_table_has_one_line_per_row_and_escapes_pipes(cells):
    import pandas as pd
    md = markdown_table(pd.DataFrame({'c': cells}))
    lines = md.split('\n')
    assert len(lines) == len(cells) + 2
    assert all(l.count('|') - l.count('\\|') == 3 for l in lines)   # two columns: three unescaped pipes a line

verdict_lists = st.lists(st.sampled_from(VERDICTS[:3] + ('no results',)), min_size=1, max_size=6)

@given(verdict_lists, st.data())
def test_budget_helpers_follow_the_findings_with_results(after, data):
    before = data.draw(st.lists(st.sampled_from(VERDICTS[:3]), min_size=len(after), max_size=len(after)))
    idx = [f'finding {i}' for i in range(len(after))]
    earlier = pd.DataFrame({'difference': 0.0, 'verdict': before}, index=idx)
    study = pd.DataFrame({'difference': 0.0, 'verdict': after}, index=idx)
    ran = [i for i, v in zip(idx, after) if v != 'no results']
    t = budget_changes(earlier, study, ('a', 'b'))
    assert (t is None) == (not ran)
    if t is not None: assert t.index.tolist() == ran and t['a verdict'].tolist() == [before[idx.index(i)] for i in ran]
    table, label = settled_findings(earlier, study, ('a', 'b'))
    assert (label == 'b') == (len(ran) == len(idx)) and table is (study if label == 'b' else earlier)

@given(st.lists(st.floats(0.3, 0.95), min_size=1, max_size=4), st.floats(30, 95))
def test_bar_lines_says_met_exactly_when_fp_clears_the_bag_by_2(fp, bag):
    runs = pd.DataFrame({'experiment': 'fp', 'seed': range(len(fp)), 'test_acc_at_best': fp})
    gap = 100 * np.mean(fp) - bag
    text = bar_lines(runs, 'x', bag=bag)
    if abs(gap - 2) > 1e-9: assert (': met (' in text) == (gap >= 2) and ('not met' in text) == (gap < 2), text
    assert f'({gap:+.1f} points)' in text
