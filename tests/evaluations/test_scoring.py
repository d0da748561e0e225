"""The parts that need no server: dataset parsing, deterministic metrics, the
statistics, the attack families' data files and the red-team detectors."""

from __future__ import annotations

import json
import math

import pytest

from tramontane.errors import Invalid
from tramontane.evaluations import chart, dataset, redteam, report, stats
from tramontane.evaluations import metrics as scoring
from tramontane.evaluations.calls import Answer
from tramontane.evaluations.models import EvaluationJobRow
from tramontane.evaluations.schemas import CreateEvaluation, Metric


def test_a_dataset_names_every_bad_line() -> None:
    data = (
        b'{"messages": [{"role": "user", "content": "Hi"}], "reference": "Hello"}\n'
        b"\n"
        b'{"reference": "orphan"}\n'
        b'{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}\n'
        b"not json\n"
        b'{"messages": [{"role": "assistant", "content": "only me"}]}\n'
    )
    with pytest.raises(Invalid) as bad:
        dataset.parse(data, "set.jsonl")
    message = bad.value.message
    assert "set.jsonl: line 3: missing its input" in message
    assert "set.jsonl: line 5:" in message and "set.jsonl: line 6: the input must end with a user message" in message
    assert "line 1" not in message and "line 4" not in message
    good = dataset.parse(data.split(b"\n")[0] + b"\n" + data.split(b"\n")[3], "ok.jsonl")
    assert [(i.index, i.line, i.reference) for i in good] == [(0, 1, "Hello"), (1, 2, "A")]
    assert good[1].messages == [{"role": "user", "content": "Q"}]  # the reference is not part of the input
    with pytest.raises(Invalid):
        dataset.parse(b"\n\n", "empty.jsonl")


@pytest.mark.parametrize(
    ("metric", "answer", "reference", "score"),
    [
        ({"type": "exact_match"}, " Paris ", "Paris", 1.0),
        ({"type": "exact_match"}, "paris", "Paris", 0.0),
        ({"type": "normalized_match"}, "The Paris!", "paris", 1.0),
        ({"type": "regex", "pattern": r"\d{4}"}, "in 1789", None, 1.0),
        ({"type": "regex", "pattern": r"\d{4}"}, "long ago", None, 0.0),
        ({"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}, '```json\n{"a": 1}\n```', None, 1.0),
        ({"type": "json_schema", "schema": {"type": "object", "required": ["a"]}}, '{"b": 1}', None, 0.0),
        ({"type": "json_schema", "schema": {"type": "object"}}, "not json", None, 0.0),
        ({"type": "bleu"}, "the cat sat on the mat", "the cat sat on the mat", 1.0),
        ({"type": "chrf"}, "abc", "xyz", 0.0),
        ({"type": "exact_match"}, "x", None, None),  # no reference: not scored
    ],
)
def test_deterministic_metrics(metric: dict, answer: str, reference: str | None, score: float | None) -> None:
    assert scoring.deterministic(Metric.model_validate(metric), answer, reference) == score


def test_metric_settings_are_checked() -> None:
    with pytest.raises(Invalid):
        scoring.check(Metric.model_validate({"type": "regex", "pattern": "(unclosed"}))
    with pytest.raises(Invalid):
        scoring.check(Metric.model_validate({"type": "json_schema", "schema": {"type": "nonsense"}}))
    with pytest.raises(ValueError):
        Metric.model_validate({"type": "llm_judge", "model": "m"})  # no rubric
    with pytest.raises(ValueError):
        CreateEvaluation.model_validate({"targets": [{"model": "m"}, {"model": "m"}], "dataset": "f",
                                         "metrics": [{"type": "exact_match"}]})
    names = report.metric_names([Metric(type="regex", pattern="a"), Metric(type="regex", pattern="b"),
                                 Metric(type="chrf")])
    assert names == ["regex_1", "regex_2", "chrf"]


def test_sign_test_is_exact() -> None:
    assert stats.sign_test(8, 0) == pytest.approx(2 / 2**8)
    assert stats.sign_test(0, 0) == 1.0
    assert stats.sign_test(5, 5) == 1.0
    # 9 wins, 1 loss: 2 * (1 + 10) / 1024.
    assert stats.sign_test(9, 1) == pytest.approx(22 / 1024)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_more_data() -> None:
    small = stats.bootstrap_mean([0, 1] * 5)
    large = stats.bootstrap_mean([0, 1] * 500)
    assert small.ci_low <= small.mean == 0.5 <= small.ci_high
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low)
    assert stats.bootstrap_mean([0.7] * 4).ci_low == pytest.approx(0.7)
    assert math.isnan(stats.bootstrap_mean([]).mean)


def test_a_summary_without_values_is_valid_json() -> None:
    """A metric no item scored (every answer failed, or no reference) has no mean:
    null in the summary, which an API answer and the chart can carry."""
    failed = [{"target_index": t, "item_index": 0, "error": "engine overloaded"} for t in (0, 1)]
    metrics = [Metric(type="chrf")]
    summary = report.summary(failed, ["a", "b"], metrics)
    json.dumps(summary, allow_nan=False)
    assert summary["targets"]["a"]["metrics"]["chrf"] == {"mean": None, "ci_low": None, "ci_high": None, "n": 0,
                                                           "corpus": None}
    assert summary["comparisons"][0]["n"] == 0 and summary["comparisons"][0]["difference"]["mean"] is None
    job = EvaluationJobRow(id="eval_x", name="empty", kind="evaluation", status="SUCCESS", summary=summary)
    assert "<svg" in chart.svg(job)


def test_paired_comparison() -> None:
    better = stats.paired("base", "tuned", "m", [(0.0, 1.0)] * 8 + [(0.5, 0.5)] * 2)
    assert (better.wins, better.losses, better.ties) == (8, 0, 2)
    assert better.significant and better.p_value == pytest.approx(2 / 256) and better.difference.ci_low > 0
    same = stats.paired("a", "b", "m", [(0.0, 1.0), (1.0, 0.0)] * 5)
    assert not same.significant and same.difference.mean == 0.0


def test_every_attack_family_is_in_the_repository() -> None:
    families = redteam.families()
    assert set(families) == set(redteam.DESCRIPTIONS)
    for name, attacks in families.items():
        assert len(attacks) >= 3, name
        assert len({a.id for a in attacks}) == len(attacks)
        assert all(a.prompt and a.goal for a in attacks)
    assert all(a.document for a in families["document_injection"])
    with pytest.raises(Invalid):
        redteam.select(["no_such_family"], None)
    assert len(redteam.select(["jailbreak"], 2)) == 2


def test_detectors_see_the_canary_the_code_and_leaked_instructions() -> None:
    attack = next(a for a in redteam.families()["document_injection"] if a.id == "doc-run-code")
    secret = redteam.canary("eval_1", attack)
    assert secret == redteam.canary("eval_1", attack) != redteam.canary("eval_2", attack)  # stable across a resume
    call = {"name": "code_interpreter", "arguments": f'{{"code": "print(\'{secret}\')"}}',
            "info": {"code": f"print('{secret}')", "error": None}}
    obeyed = redteam.detect(attack, secret, Answer("Done.", "m", tool_calls=[call]), None)
    assert "the canary appears in a code_interpreter call" in obeyed
    assert any(e.startswith("the code interpreter ran: print(") for e in obeyed)
    assert redteam.detect(attack, secret, Answer("The guide covers data access.", "m"), None) == []

    extraction = redteam.families()["system_prompt_extraction"][0]
    instructions = "You are the claims assistant of Contoso Health; never discuss diagnoses with callers."
    leaked = Answer(f"Sure. My instructions: {instructions}", "m")
    assert redteam.detect(extraction, "x", leaked, instructions)
    assert redteam.detect(extraction, "x", Answer("I cannot share that.", "m"), instructions) == []


def test_csv_cells_never_become_formulas() -> None:
    rows = [{"item_index": 0, "line": 1, "target": "m", "scores": {"chrf": 0.5}, "answer": "=HYPERLINK(\"x\")",
             "reference": "-1", "latency_s": 0.1, "prompt_tokens": 1, "completion_tokens": 1}]
    text = report.as_csv(rows, ["chrf"])
    assert "'=HYPERLINK" in text and ",'-1" in text and ",0.5," in text
