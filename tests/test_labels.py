"""One LABEL=DIR parser for --targets / --surrogate_dir / --ensembles, and one export-vs-dataset check."""

import pytest

from tf_divtrain import analysis, evaluation, export, labels


def test_parse_label_dirs_accepts_strings_lists_pairs_and_mappings():
    p = labels.parse_label_dirs
    want = [("A", "runs/a"), ("B", "runs/b=1")]  # only the first '=' splits
    assert p(" A = runs/a , B=runs/b=1 ,", "Target", "A=x") == want
    assert p(["A=runs/a", ("B", "runs/b=1")], "Target", "A=x") == want
    assert p({"A": "runs/a", "B": "runs/b=1"}, "Target", "A=x") == want


@pytest.mark.parametrize("spec,msg", [
    ("runs/a", "not LABEL=DIR"), ("=runs/a", "empty label"), ("A=", "no directory"),
    ("A=x,A=y", "'A' appears more than once"), (" , ", "No target given"), ("S=x", "reserved"),
])
def test_parse_label_dirs_errors_say_what_and_how(spec, msg):
    with pytest.raises(KeyError, match=msg):
        labels.parse_label_dirs(spec, "Target", "T_Base=runs/base", KeyError, reserved=("S",))


def test_the_three_clis_share_the_parser():
    assert evaluation.parse_targets("T_Base=a") == [("T_Base", "a")]
    assert analysis.parse_ensembles("T_Base=a,T_Div=b") == {"T_Base": "a", "T_Div": "b"}
    with pytest.raises(evaluation.EvaluationError, match="not LABEL=DIR"):
        evaluation.parse_targets("runs/base")
    with pytest.raises(analysis.AnalysisError, match="not LABEL=DIR.*--ensembles=T_Base=runs/base"):
        analysis.parse_ensembles("runs/base")
    with pytest.raises(analysis.AnalysisError, match="more than once"):
        analysis.parse_ensembles("A=x,A=y")
    with pytest.raises(evaluation.EvaluationError, match="reserved"):
        evaluation.parse_targets(f"{evaluation.SURROGATE_LABEL}=x")


def test_dataset_mismatch_names_the_difference():
    meta = {"dataset": "mnist", "input_shape": [28, 28, 1], "num_classes": 10}
    assert export.dataset_mismatch(meta, "mnist") == ""
    assert "not on 'cifar10'" in export.dataset_mismatch(meta, "cifar10")
    assert "shape [32, 32, 3]" in export.dataset_mismatch({**meta, "input_shape": [32, 32, 3]}, "mnist")
    assert "has 100 classes" in export.dataset_mismatch({**meta, "num_classes": 100}, "mnist")


def test_clis_share_dataset_and_precision_flags_and_the_error_exit(tmp_path, capsys):
    from absl import flags

    from tf_divtrain import analyze, evaluate, train

    for cli, extra in ((train, [f"--out_dir={tmp_path}"]), (analyze, []),
                       (evaluate, ["--surrogate_dir=s", "--targets=T=t", f"--out_dir={tmp_path}"])):
        fv = flags.FlagValues()
        cli.define_flags(fv)
        assert "data_dir" in fv and "precision" in fv
        with pytest.raises(flags.IllegalFlagValueError, match="--dataset must be one of cifar10, "):
            fv(["prog", "--dataset=imagenet"] + extra)
    fv = flags.FlagValues()
    evaluate.define_flags(fv)
    fv(["prog", f"--surrogate_dir={tmp_path / 'nope'}", "--targets=T=t", f"--out_dir={tmp_path / 'o'}"])
    with pytest.raises(SystemExit) as e:
        evaluate.main(["prog"], fv)
    assert e.value.code == 2 and capsys.readouterr().err.startswith("error: surrogate")
