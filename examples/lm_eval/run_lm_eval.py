"""Runs an lm-evaluation-harness task against a Tramontane server, offline.

lm-eval's `local-chat-completions` model speaks the OpenAI chat API, which the
server serves; the task's data is a local JSONL file (here made by this script,
in practice the user's own copy of a benchmark), so nothing is fetched from a hub.

    python examples/lm_eval/run_lm_eval.py --url http://127.0.0.1:8000 \\
        --api-key "$TRAMONTANE_API_KEY" --model smollm2-135m-instruct --out /tmp/lm-eval

The same task runs from lm-eval's own command line (the script prints it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

# Capital cities: a small generation task with one exact answer per question.
QUESTIONS = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Greece", "Athens"),
]

TASK = """task: tramontane_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "What is the capital of {{{{country}}}}? Answer with the city name only."
doc_to_target: "{{{{capital}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  temperature: 0
filter_list:
  - name: strip
    filter:
      # The answer's last capitalised word: "The capital of France is Paris." -> Paris
      - function: regex
        regex_pattern: '(?s).*\\b([A-Z][a-z]+)'
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 1.0
"""


def write_task(folder: Path) -> Path:
    """The dataset and the task's YAML in `folder`; returns the folder to include."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps({"country": c, "capital": k}) + "\n" for c, k in QUESTIONS))
    (folder / "tramontane_capitals.yaml").write_text(TASK.format(data=data))
    return folder


def evaluate(url: str, api_key: str, model: str, folder: Path, limit: int | None = None) -> dict[str, Any]:
    """lm-eval's results for the task, run through the server's /v1/chat/completions."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never reach a hub
    os.environ["OPENAI_API_KEY"] = api_key
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=str(write_task(folder)))
    return lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args=f"base_url={url.rstrip('/')}/v1/chat/completions,model={model},max_retries=1,num_concurrent=1",
        tasks=["tramontane_capitals"],
        task_manager=tasks,
        apply_chat_template=True,
        limit=limit,
        log_samples=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("TRAMONTANE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("TRAMONTANE_API_KEY", ""))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, default=Path("lm-eval-capitals"))
    args = parser.parse_args()
    results = evaluate(args.url, args.api_key, args.model, args.out)
    print(json.dumps(results["results"], indent=2))
    for sample in results["samples"]["tramontane_capitals"]:
        print(f"{sample['doc']['country']:>10}: {sample['filtered_resps'][0]!r} (target {sample['target']})")
    print(
        "\nThe same from lm-eval's command line:\n"
        f"  OPENAI_API_KEY=... HF_DATASETS_OFFLINE=1 lm_eval --model local-chat-completions "
        f"--model_args base_url={args.url}/v1/chat/completions,model={args.model} "
        f"--tasks tramontane_capitals --include_path {args.out} --apply_chat_template"
    )


if __name__ == "__main__":
    main()
