"""Lint rules CX2xx: train_conf (optimizer, scheduler, accumulation, logging, epochs)."""

from __future__ import annotations

import difflib
from typing import Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.yamlpos import YMap

SCHEDULERS = ("warmuplr", "NoamHoldAnnealing", "constantlr")
OPTIMIZERS = ("adam", "adamw")


def _tc(ctx: LintContext, *path: str):
    return ctx.doc.node("train_conf", *path), ctx.doc.value("train_conf", *path)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _accum(ctx: LintContext) -> Iterator[Issue]:
    node, v = _tc(ctx, "accum_grad")
    if node is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        yield Issue(f"accum_grad is {v!r}; it must be an integer >= 1 (the executor computes (batch_idx + 1) % "
                    "accum_grad, and the optimizer steps only when it is 0)", at=node, fix="accum_grad: 1")


def _scheduler(ctx: LintContext) -> Iterator[Issue]:
    for key, allowed in (("scheduler", SCHEDULERS), ("optim", OPTIMIZERS)):
        node, v = _tc(ctx, key)
        if node is None or v in allowed:
            continue
        close = difflib.get_close_matches(str(v), allowed, n=1, cutoff=0.5)
        yield Issue(f"train_conf.{key} {v!r} is not one upstream knows ({', '.join(allowed)}): it raises at start-up",
                    at=node, fix=f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(allowed)}")


def _deepspeed_constantlr(ctx: LintContext) -> Iterator[Issue]:
    if ctx.doc.value("train_conf", "scheduler") != "constantlr":
        return
    conf = ctx.doc.deref(ctx.doc.node("train_conf", "scheduler_conf"))
    if not isinstance(conf, YMap) or not conf.items:
        return
    keys = ", ".join(conf.keys())
    if ctx.train_engine == "deepspeed":
        yield Issue(f"scheduler constantlr with scheduler_conf ({keys}) under DeepSpeed: upstream passes scheduler_conf "
                    f"to ConstantLR, which fails with \"unexpected keyword argument '{conf.keys()[0]}'\"",
                    at=ctx.doc.node("train_conf", "scheduler"), fix="use scheduler_conf: {} with constantlr, or warmuplr")
    else:
        yield Issue(f"scheduler constantlr ignores scheduler_conf ({keys}) under torch_ddp, and under DeepSpeed it "
                    "crashes (ConstantLR got an unexpected keyword argument)",
                    at=ctx.doc.node("train_conf", "scheduler"),
                    severity="warning", fix="set scheduler_conf: {} (or switch to warmuplr if you want warmup)")


def _log_interval(ctx: LintContext) -> Iterator[Issue]:
    node, v = _tc(ctx, "log_interval")
    if node is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        yield Issue(f"log_interval is {v!r}; it must be an integer >= 1 (loss is printed every log_interval batches)",
                    at=node, fix="log_interval: 10 (run lint with --data to compare it with the batches per epoch)")


def _epochs_clip(ctx: LintContext) -> Iterator[Issue]:
    node, v = _tc(ctx, "max_epoch")
    if node is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        yield Issue(f"max_epoch is {v!r}: train.py loops range(start_epoch + 1, max_epoch), so nothing is trained",
                    at=node, fix="max_epoch: 10 (or more)")
    node, v = _tc(ctx, "grad_clip")
    if node is not None and (not _is_num(v) or v <= 0):
        yield Issue(f"grad_clip is {v!r}: clip_grad_norm_ with max_norm <= 0 scales every gradient to zero "
                    "(the model never changes)", at=node, fix="grad_clip: 5")


def _lr(ctx: LintContext) -> Iterator[Issue]:
    node, v = _tc(ctx, "optim_conf", "lr")
    if node is None:
        if ctx.doc.node("train_conf", "optim_conf") is not None:
            yield Issue("optim_conf has no lr", at=ctx.doc.key("train_conf", "optim_conf"), fix="lr: 1e-5 (fine-tuning)")
        return
    if not _is_num(v):
        yield Issue(f"optim_conf.lr {v!r} is not a number (write 1.0e-5 or 1e-5, unquoted)", at=node, fix="lr: 1e-5")
    elif v <= 0:
        yield Issue(f"optim_conf.lr is {v}: nothing is learned", at=node, fix="lr: 1e-5 (full) or 1e-4 (LoRA)")
    elif v > 1e-2:
        yield Issue(f"optim_conf.lr {v:g} is very high for fine-tuning a pretrained model (diverges)",
                    at=node, severity="warning", fix="lr: 1e-5 (full fine-tune) or 1e-4 (LoRA)")


RULES = [
    Rule("CX201", "accum-grad", "error", "accum_grad is not an integer >= 1.", _accum,
         why="With accum_grad < 1 the executor's modulo never hits 0 (or divides by zero): no optimizer step.",
         example="train_conf:\n  accum_grad: 0", fix="accum_grad: 1 (or more to emulate bigger batches)."),
    Rule("CX202", "unknown-scheduler", "error", "train_conf.scheduler / optim is not one upstream supports.", _scheduler,
         why="init_optimizer_and_scheduler raises ValueError for any other name, after the model was built.",
         example="train_conf:\n  scheduler: constantLR", fix="warmuplr, NoamHoldAnnealing or constantlr; adam or adamw."),
    Rule("CX203", "constantlr-scheduler-conf", "error", "constantlr with a non-empty scheduler_conf.",
         _deepspeed_constantlr,
         why="Under DeepSpeed upstream calls ConstantLR(opt, **scheduler_conf): `unexpected keyword argument "
             "'warmup_steps'` (measured). Under torch_ddp the warmup is silently ignored. Error with "
             "--train-engine deepspeed, warning otherwise.",
         example="train_conf:\n  scheduler: constantlr\n  scheduler_conf:\n    warmup_steps: 2500",
         fix="scheduler_conf: {} with constantlr, or scheduler: warmuplr."),
    Rule("CX204", "log-interval", "error", "log_interval is not an integer >= 1.", _log_interval,
         why="Loss lines are printed when (batch_idx + 1) % log_interval == 0.",
         example="train_conf:\n  log_interval: 0", fix="log_interval: 10."),
    Rule("CX205", "epochs-and-clip", "error", "max_epoch < 1 or grad_clip <= 0.", _epochs_clip,
         why="max_epoch < 1 trains nothing; grad_clip <= 0 zeroes every gradient.",
         example="train_conf:\n  max_epoch: 0\n  grad_clip: 0", fix="max_epoch >= 1, grad_clip: 5."),
    Rule("CX206", "learning-rate", "error", "optim_conf.lr missing, not a number, <= 0 (error) or > 1e-2 (warning).",
         _lr,
         why="A quoted or malformed lr reaches torch as a string; lr <= 0 learns nothing; very high rates "
             "destroy the pretrained weights.",
         example="train_conf:\n  optim_conf:\n    lr: '1e-5'", fix="lr: 1e-5 (full) or 1e-4 (LoRA)."),
]
