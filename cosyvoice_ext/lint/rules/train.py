"""Lint rules CX2xx: train_conf (optimizer, scheduler, accumulation, logging, epochs)."""

from __future__ import annotations

import difflib
from typing import Iterator

from cosyvoice_ext.lint import Issue, LintContext, Rule
from cosyvoice_ext.lint.target import Signature
from cosyvoice_ext.lint.yamlpos import YMap

SCHEDULERS = ("warmuplr", "NoamHoldAnnealing", "constantlr")
OPTIMIZERS = ("adam", "adamw")


def _tc(ctx: LintContext, *path: str):
    return ctx.doc.node("train_conf", *path), ctx.doc.value("train_conf", *path)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _whole(v) -> bool:
    return _is_num(v) and float(v).is_integer()


def _counter(ctx: LintContext, key: str, what: str, fix: str) -> Iterator[Issue]:
    """accum_grad and log_interval: the executor takes ``(batch_idx + 1) % value == 0``. Zero divides by
    zero and a string is a TypeError (errors); a whole float works like the integer; a fraction or a
    negative number runs, just not as meant (warnings)."""
    node, v = _tc(ctx, key)
    if node is None:
        return
    if not _is_num(v) or v == 0:
        num = _float(v)
        yield Issue(f"{key} is {v!r}; the executor computes (batch_idx + 1) % {key}, which fails "
                    f"({'ZeroDivisionError' if v == 0 else 'TypeError'}) at the first batch", at=node,
                    fix="remove the quotes (a number, not a string)" if isinstance(v, str) and num and num >= 1 else fix)
    elif v < 0 or not _whole(v):
        yield Issue(f"{key} is {v!r}; it should be a whole number >= 1 ({what})", at=node, severity="warning", fix=fix)


def _accum(ctx: LintContext) -> Iterator[Issue]:
    """The executor steps the optimizer when ``(batch_idx + 1) % accum_grad == 0`` and divides each loss by
    accum_grad: 0 stops training at the first batch (ZeroDivisionError, seen) and a string too (TypeError);
    a negative value turns every loss around (the weights climb it). A whole float (2.0) works like the
    integer; a fraction steps at odd batch counts (a warning)."""
    node, v = _tc(ctx, "accum_grad")
    if _is_num(v) and v < 0:
        yield Issue(f"accum_grad is {v!r}: the executor divides each loss by it, so every step climbs the loss "
                    "(the weights move away from the data)", at=node, fix="accum_grad: 1")
        return
    yield from _counter(ctx, "accum_grad", "optimizer steps happen when (batch_idx + 1) % accum_grad == 0",
                        "accum_grad: 1 (or more, to emulate bigger batches)")


def _scheduler(ctx: LintContext) -> Iterator[Issue]:
    """init_optimizer_and_scheduler raises ValueError for any other name, after the model was built."""
    for key, allowed in (("scheduler", SCHEDULERS), ("optim", OPTIMIZERS)):
        node, v = _tc(ctx, key)
        if node is None or v in allowed:
            continue
        close = difflib.get_close_matches(str(v), allowed, n=1, cutoff=0.5)
        yield Issue(f"train_conf.{key} {v!r} is not one upstream knows ({', '.join(allowed)}): it raises at start-up",
                    at=node, fix=f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(allowed)}")


def _deepspeed_constantlr(ctx: LintContext) -> Iterator[Issue]:
    """Under DeepSpeed upstream calls ConstantLR(opt, **scheduler_conf): `unexpected keyword argument 'warmup_steps'`
    (measured). Under torch_ddp the warmup is silently ignored. Error with --train-engine deepspeed, warning
    otherwise."""
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


#: the schedulers train_utils.init_optimizer_and_scheduler builds as Class(optimizer, **scheduler_conf)
SCHEDULER_CLASSES = {"warmuplr": "cosyvoice.utils.scheduler.WarmupLR",
                     "NoamHoldAnnealing": "cosyvoice.utils.scheduler.NoamHoldAnnealing"}
#: their keyword arguments at both supported commits (44316c34, ace7c47), for lint without --upstream
KNOWN_SCHEDULERS = {
    "warmuplr": Signature(("warmup_steps", "last_epoch"), any_kw=False),
    "NoamHoldAnnealing": Signature(("max_steps", "decay_rate", "min_lr", "last_epoch"), any_kw=True,
                                   required=("max_steps",)),
}


def _scheduler_conf(ctx: LintContext) -> Iterator[Issue]:
    """train_utils builds warmuplr and NoamHoldAnnealing as ``Class(optimizer, **scheduler_conf)``:
    a keyword the class does not take, or one it requires and does not get, is a TypeError before the
    first step (seen: NoamHoldAnnealing with ``scheduler_conf: {}`` -> ``missing 1 required
    keyword-only argument: 'max_steps'``), and so is a scheduler_conf that is not a mapping. With
    ``--upstream DIR`` the signature is read from that tree's cosyvoice/utils/scheduler.py."""
    name = ctx.doc.value("train_conf", "scheduler")
    if name not in SCHEDULER_CLASSES or ctx.doc.key("train_conf", "scheduler_conf") is None:
        return  # other names: CX202; no scheduler_conf: CX503
    node = ctx.doc.node("train_conf", "scheduler_conf")
    conf = ctx.doc.value("train_conf", "scheduler_conf")
    at = node if node is not None else ctx.doc.key("train_conf", "scheduler_conf")
    if not isinstance(conf, dict):
        yield Issue(f"scheduler_conf is {conf!r}, not a mapping: upstream calls {name}(optimizer, **scheduler_conf) "
                    "(TypeError: argument after ** must be a mapping)", at=at,
                    fix="scheduler_conf: {warmup_steps: 2500}" if name == "warmuplr" else "scheduler_conf: {max_steps: ...}")
        return
    up = ctx.upstream
    found = up.symbols.lookup(SCHEDULER_CLASSES[name]) if up is not None and up.symbols is not None else (None, None)
    sig = found[1] or KNOWN_SCHEDULERS[name]
    for key in conf:
        if not sig.accepts(key):
            yield Issue(f"{name} takes no argument '{key}' (it takes {', '.join(sig.params)}): TypeError at start-up",
                        at=ctx.doc.key("train_conf", "scheduler_conf", key) or at,
                        fix=(f"rename it to {close[0]}" if (close := difflib.get_close_matches(key, sig.params, n=1,
                                                                                               cutoff=0.6))
                             else f"remove {key} (or use a scheduler that takes it)"))
    missing = [p for p in sig.required if p != "optimizer" and p not in conf]
    if missing:
        yield Issue(f"{name} requires {', '.join(missing)} in scheduler_conf: TypeError at start-up (missing required "
                    "argument)", at=at, fix=f"add {', '.join(f'{m}: ...' for m in missing)} to scheduler_conf"
                    + (" (the run's total optimizer steps: lint --data counts them)" if "max_steps" in missing else ""))


def _log_interval(ctx: LintContext) -> Iterator[Issue]:
    """Loss lines are printed when ``(batch_idx + 1) % log_interval == 0``: 0 stops training at the first
    batch (ZeroDivisionError, seen), a string too (TypeError). A whole float works like the integer; a
    fraction or a negative number runs but logs at odd intervals (a warning). lint --data compares
    log_interval with the batches of an epoch (CX603)."""
    yield from _counter(ctx, "log_interval", "loss is printed every log_interval batches",
                        "log_interval: 10 (run lint with --data to compare it with the batches per epoch)")


def _epochs_clip(ctx: LintContext) -> Iterator[Issue]:
    """train.py loops ``range(start_epoch + 1, max_epoch)``: anything but an integer is a TypeError (seen with '2' and
    2.0), below 1 trains nothing. ``clip_grad_norm_(params, grad_clip)`` converts grad_clip with float(): 0 scales
    every gradient to zero (no weight changes, seen), a negative value turns every gradient around (the weights
    climb the loss, seen), a numeric string works."""
    node, v = _tc(ctx, "max_epoch")
    if node is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        why = ("so nothing is trained" if isinstance(v, int) and not isinstance(v, bool)
               else "and range() takes integers only (TypeError)")
        whole = _float(v)
        if whole is not None and whole >= 1 and whole.is_integer():
            fix = ("remove the quotes (an integer, not a string)" if isinstance(v, str)
                   else f"write it as the integer {int(whole)}, without a decimal point")
        else:
            fix = "max_epoch: 10 (or more)"
        yield Issue(f"max_epoch is {v!r}: train.py loops range(start_epoch + 1, max_epoch), {why}", at=node, fix=fix)
    node, v = _tc(ctx, "grad_clip")
    if node is None:
        return
    num = _float(v)
    if num is None:
        yield Issue(f"grad_clip is {v!r}: clip_grad_norm_ needs a number (float({v!r}) fails)", at=node,
                    fix="grad_clip: 5")
    elif num == 0:
        yield Issue("grad_clip is 0: clip_grad_norm_ with max_norm 0 scales every gradient to zero (the model never "
                    "changes)", at=node, fix="grad_clip: 5")
    elif num < 0:
        yield Issue(f"grad_clip is {v!r}: clip_grad_norm_ scales the gradients by max_norm / norm, which is negative, "
                    "so every step moves the weights uphill", at=node, fix=f"grad_clip: {-num:g}")
    elif isinstance(v, str):
        yield Issue(f"grad_clip is the string {v!r}; torch converts it with float(), but write a number",
                    at=node, severity="warning", fix="remove the quotes")


def _float(v) -> float | None:
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _lr(ctx: LintContext) -> Iterator[Issue]:
    """upstream builds ``Adam(params, **optim_conf)``: an optim_conf that is not a mapping is a TypeError, a
    quoted lr fails torch's range check (TypeError, seen), a negative lr its ValueError (seen), lr 0 changes
    no weight (seen). Without lr torch's default (0.001 for Adam and AdamW) applies, and rates above 1e-2
    destroy the pretrained weights (warnings)."""
    conf_key = ctx.doc.key("train_conf", "optim_conf")
    node, v = _tc(ctx, "optim_conf", "lr")
    if node is None:
        if conf_key is None:
            return  # CX503
        conf = ctx.doc.value("train_conf", "optim_conf")
        if not isinstance(conf, dict):
            yield Issue(f"optim_conf is {conf!r}, not a mapping: upstream calls Adam(params, **optim_conf) (TypeError: "
                        "argument after ** must be a mapping)", at=conf_key, fix="optim_conf:\n    lr: 1e-5")
        else:
            yield Issue("optim_conf has no lr: torch's default for Adam/AdamW (0.001) applies, high for fine-tuning",
                        at=conf_key, severity="warning", fix="lr: 1e-5 (full fine-tune) or 1e-4 (LoRA)")
        return
    if not _is_num(v):
        num = _float(v)
        yield Issue(f"optim_conf.lr {v!r} is not a number (torch compares it with 0.0: TypeError)", at=node,
                    fix=f"lr: {num:g} without quotes" if num is not None else "lr: 1e-5")
    elif v < 0:
        yield Issue(f"optim_conf.lr is {v}: torch refuses it (ValueError: Invalid learning rate)", at=node,
                    fix="lr: 1e-5 (full) or 1e-4 (LoRA)")
    elif v == 0:
        yield Issue("optim_conf.lr is 0: no weight ever changes", at=node, fix="lr: 1e-5 (full) or 1e-4 (LoRA)")
    elif v > 1e-2:
        yield Issue(f"optim_conf.lr {v:g} is very high for fine-tuning a pretrained model (diverges)",
                    at=node, severity="warning", fix="lr: 1e-5 (full fine-tune) or 1e-4 (LoRA)")


RULES = [
    Rule("CX201", "accum-grad", "error", "accum_grad is zero, negative or not a number (a fraction: warning).", _accum,
         example="train_conf:\n  accum_grad: 0", fix="accum_grad: 1 (or more to emulate bigger batches)."),
    Rule("CX202", "unknown-scheduler", "error", "train_conf.scheduler / optim is not one upstream supports.", _scheduler,
         example="train_conf:\n  scheduler: constantLR", fix="warmuplr, NoamHoldAnnealing or constantlr; adam or adamw."),
    Rule("CX203", "constantlr-scheduler-conf", "error", "constantlr with a non-empty scheduler_conf.",
         _deepspeed_constantlr,
         example="train_conf:\n  scheduler: constantlr\n  scheduler_conf:\n    warmup_steps: 2500",
         fix="scheduler_conf: {} with constantlr, or scheduler: warmuplr."),
    Rule("CX207", "scheduler-arguments", "error",
         "scheduler_conf does not fit the scheduler's arguments (unknown, missing required, not a mapping).",
         _scheduler_conf, example="train_conf:\n  scheduler: NoamHoldAnnealing\n  scheduler_conf: {}",
         fix="Give the scheduler the arguments it takes (warmuplr: warmup_steps; NoamHoldAnnealing: max_steps, ...)."),
    Rule("CX204", "log-interval", "error", "log_interval is zero or not a number (a fraction or negative: warning).", _log_interval,
         example="train_conf:\n  log_interval: 0", fix="log_interval: 10."),
    Rule("CX205", "epochs-and-clip", "error", "max_epoch not an integer >= 1, or grad_clip not a number > 0.", _epochs_clip,
         example="train_conf:\n  max_epoch: 0\n  grad_clip: 0", fix="max_epoch >= 1, grad_clip: 5."),
    Rule("CX206", "learning-rate", "error", "optim_conf.lr not a number or <= 0, optim_conf not a mapping (lr missing or > 1e-2: warning).",
         _lr,
         example="train_conf:\n  optim_conf:\n    lr: '1e-5'", fix="lr: 1e-5 (full) or 1e-4 (LoRA)."),
]
