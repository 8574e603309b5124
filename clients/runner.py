"""Runs one evaluation: resolve the model, load examples, evaluate the unfinished ones
concurrently (each record written as it completes), then summarise.

`run_eval(config)` is the function an end-to-end test calls; `run_sweep(args)` runs every
configuration a CLI invocation asks for.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import httpx
from tqdm import tqdm

from clients import csqa, gsm8k
from clients.answers import truncate_cot
from clients.api import ApiClient
from clients.common import Example, Output, Request
from clients.config import SCORING_PROTOCOLS, EvalConfig, EvalError, configs_from_args
from clients.results import ResultsFile, summarize, write_summary

logger = logging.getLogger(__name__)

TASKS: dict[str, ModuleType] = {"gsm8k": gsm8k, "csqa": csqa}


def run_eval(
    config: EvalConfig | argparse.Namespace,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    backoff_s: float = 0.5,
) -> dict[str, Any]:
    """Evaluate one configuration; return its summary (also written as summary.json / .md).

    `transport` lets tests inject a fake endpoint (httpx.MockTransport).
    """
    if isinstance(config, argparse.Namespace):
        configs = configs_from_args(config)
        if len(configs) != 1:
            raise ValueError("these arguments describe a sweep; call run_sweep")
        config = configs[0]
    return asyncio.run(_run(config, transport, backoff_s))


def run_sweep(
    args: argparse.Namespace | Sequence[EvalConfig], **kwargs: Any
) -> list[dict[str, Any]]:
    """Every run the arguments ask for (one per `--thought-tokens` and `--thought-content`
    value), in order."""
    configs = configs_from_args(args) if isinstance(args, argparse.Namespace) else list(args)
    return [run_eval(config, **kwargs) for config in configs]


async def _run(
    config: EvalConfig, transport: httpx.AsyncBaseTransport | None, backoff_s: float
) -> dict[str, Any]:
    started = time.perf_counter()
    task = TASKS[config.task]
    client = ApiClient(
        config.base_url,
        config.api_key,
        timeout=config.timeout,
        concurrency=config.concurrency,
        max_retries=config.max_retries,
        backoff_s=backoff_s,
        transport=transport,
    )
    async with client:
        models_answer = await client.list_models()
        model = resolve_model(config.model, models_answer, client.base_url)
        examples = task.load_examples(config.data_file, config.limit)
        out_dir = config.out_dir(model)
        results = ResultsFile(out_dir, config.fingerprint(model))
        pending = [e for e in examples if e.id not in results.records]
        logger.info(
            "%s %s %s on %s: %d example(s), %d to do -> %s",
            config.task,
            config.protocol,
            config.label,
            model,
            len(examples),
            len(pending),
            out_dir,
        )
        try:
            evaluator = Evaluator(config, task, client, model)
            await _evaluate_all(evaluator, pending, results, len(examples))
        finally:
            results.close()
    records = [results.records[e.id] for e in examples if e.id in results.records]
    wall = time.perf_counter() - started
    summary = summarize(
        records,
        config,
        model=model,
        models_answer=models_answer,
        wall_time_s=wall,
        n_new=len(pending),
        out_dir=out_dir,
    )
    write_summary(out_dir, summary)
    logger.info("%s: accuracy %.4f over %d", out_dir, summary["accuracy"], summary["n"])
    return summary


def resolve_model(requested: str | None, models_answer: dict[str, Any] | None, url: str) -> str:
    """`--model` checked against GET /models, or the first model listed there."""
    if models_answer is None:
        if requested:
            logger.warning("%s/models does not exist; using --model %s unchecked", url, requested)
            return requested
        raise EvalError(f"{url}/models does not exist (is the URL the /v1 root?); pass --model")
    ids = [m.get("id") for m in models_answer.get("data") or [] if isinstance(m, dict)]
    if requested is None:
        if not ids:
            raise EvalError(f"{url}/models lists no model; pass --model")
        return str(ids[0])
    if requested not in ids:
        raise EvalError(f"model {requested!r} is not served at {url}; available: {ids}")
    return requested


async def _evaluate_all(
    evaluator: Evaluator, pending: list[Example], results: ResultsFile, total: int
) -> None:
    """`concurrency` workers take examples in order; each record is written when it finishes."""
    queue = iter(pending)
    bar = tqdm(total=total, initial=total - len(pending), unit="ex", desc=evaluator.config.label)

    async def worker() -> None:
        for example in queue:  # a shared iterator: each example goes to exactly one worker
            results.write(await evaluator.evaluate(example))
            bar.update(1)

    workers = [asyncio.create_task(worker()) for _ in range(evaluator.config.concurrency)]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for job in workers:
            job.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        bar.close()


class Evaluator:
    """Turns one example into its requests (votes, CoT stages, options), scores, and records."""

    def __init__(self, config: EvalConfig, task: ModuleType, client: ApiClient, model: str):
        self.config, self.task, self.client, self.model = config, task, client, model

    async def evaluate(self, example: Example) -> dict[str, Any]:
        started = time.perf_counter()
        requests = self._requests(example)
        if self.config.protocol == "cot":
            calls = [self._cot_vote(example, requests[0], v) for v in range(self.config.votes)]
        elif self.config.votes > 1:
            calls = [self._call(requests[0], v) for v in range(self.config.votes)]
        else:
            calls = [self._call(request) for request in requests]
        outputs = list(await asyncio.gather(*calls))
        scored = self.task.score(example, self.config.protocol, outputs)
        generated = self.config.protocol not in SCORING_PROTOCOLS
        return {
            "id": example.id,
            "protocol": self.config.protocol,
            "label": self.config.label,
            "prompt": _one_or_list([r.prompt for r in requests]),
            "response": _one_or_list([o.text for o in outputs]) if generated else None,
            "thoughts": _one_or_list([o.reasoning for o in outputs]),
            "extracted": scored.prediction,
            "gold": example.gold,
            "correct": scored.correct,
            "score": scored.score,
            "latency_s": round(time.perf_counter() - started, 4),
            "usage": _add_usage(*(o.usage for o in outputs)),
        } | scored.extra

    def _requests(self, example: Example, cot_text: str | None = None) -> list[Request]:
        return self.task.build_request(
            example,
            self.config.protocol,
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            cot_text=cot_text,
        )

    async def _call(self, request: Request, vote: int = 0) -> Output:
        body = {"model": self.model, **request.body, "seed": self.config.seed + vote}
        if self.config.thought_controls is not None:
            body["thoughts"] = self.config.thought_controls
        output = await self.client.complete(request.endpoint, body)
        if request.body.get("echo") and not (output.logprobs or {}).get("tokens"):
            raise EvalError(
                f"{self.client.base_url}{request.endpoint} returned no prompt logprobs; "
                f"--protocol {self.config.protocol} needs echo + logprobs support"
            )
        return output

    async def _cot_vote(self, example: Example, first: Request, vote: int) -> Output:
        """Spec §6.2: chain of thought, truncated, then the answer trigger and 12 more tokens."""
        chain = await self._call(first, vote)
        second = self._requests(example, cot_text=truncate_cot(chain.text))[0]
        answer = await self._call(second, vote)
        text = second.body["prompt"][len(first.body["prompt"]) :] + answer.text
        parts = [r for r in (chain.reasoning, answer.reasoning) if r]
        reasoning = "\n".join(parts) if parts else None
        return Output(text, reasoning, None, _add_usage(chain.usage, answer.usage))


def _one_or_list(values: list[Any]) -> Any:
    """A lone value as itself, several as a list; None when all are None (no thoughts)."""
    if not any(v is not None for v in values):
        return None
    return values[0] if len(values) == 1 else values


def _add_usage(*usages: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for usage in usages:
        for key, value in usage.items():
            total[key] = total.get(key, 0) + value
    return total
