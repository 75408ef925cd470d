"""Checkpoint safety: weights_only loading, pickle payloads refused, adapter detection, digests."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from cosyvoice_ext import checkpoints
from cosyvoice_ext.errors import CheckpointError

RAN: list[str] = []


def _mark(msg: str) -> None:
    RAN.append(msg)


class _Payload:
    """An object whose unpickling would call a function of our choosing (here: a harmless marker)."""

    def __reduce__(self):
        return (_mark, ("payload ran",))


def test_plain_checkpoint_loads(tmp_path):
    path = tmp_path / "llm.pt"
    torch.save({"w": torch.arange(4.0), "epoch": 3, "step": 7, "meta": {"a": [1, "x", 2.5, None]}}, path)
    state = checkpoints.load(path)
    assert torch.equal(state["w"], torch.arange(4.0)) and state["epoch"] == 3
    assert set(checkpoints.tensors(state)) == {"w"}
    assert not checkpoints.is_adapter(state)
    assert checkpoints.load(path, mmap=True)["step"] == 7


def test_pickle_payload_is_refused_and_not_run(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _Payload()}, path)
    RAN.clear()
    with pytest.raises(CheckpointError) as err:
        checkpoints.load(path)
    assert RAN == []
    msg = str(err.value)
    assert "refusing to load" in msg and "pickle payload" in msg and str(path) in msg
    assert "GLOBAL" in msg and "_mark" in msg  # says what the payload would have called
    assert err.value.hint


def test_missing_empty_and_non_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoints.load(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        checkpoints.load(tmp_path / "empty.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        checkpoints.load(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoints.load(tmp_path / "junk.pt")


def test_adapter_detection():
    assert checkpoints.is_adapter({"cosyext": {"format": "adapter"}, "lora": {}})
    assert not checkpoints.is_adapter({"cosyext": {"format": "merged"}})
    assert not checkpoints.is_adapter({"cosyext": "adapter"})


def test_digest_and_atomic_save(tmp_path):
    path = checkpoints.save_atomic({"w": torch.ones(3)}, tmp_path / "sub" / "x.pt")
    assert path.is_file() and os.listdir(path.parent) == ["x.pt"]
    assert checkpoints.file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(checkpoints.load(path)["w"], torch.ones(3))


def test_family_of_state_tells_cosyvoice2_and_cosyvoice3_checkpoints_apart():
    """By keys only one family has (DESIGN.md §11a): CosyVoice3's LLM has no llm_embedding and no llm_decoder.bias;
    its flow has DiT transformer_blocks instead of CosyVoice2's conformer encoder."""
    t = torch.zeros(1)
    llm_common = {"llm.model.model.embed_tokens.weight": t, "speech_embedding.weight": t, "llm_decoder.weight": t}
    assert checkpoints.family_of_state({**llm_common, "llm_embedding.weight": t, "llm_decoder.bias": t}, "llm") \
        == "cosyvoice2"
    assert checkpoints.family_of_state(llm_common, "llm") == "cosyvoice3"
    assert checkpoints.family_of_state({"decoder.estimator.transformer_blocks.0.attn.to_q.weight": t,
                                        "pre_lookahead_layer.conv1.weight": t}, "flow") == "cosyvoice3"
    assert checkpoints.family_of_state({"encoder.encoders.0.self_attn.linear_q.weight": t,
                                        "decoder.estimator.down_blocks.0.0.block1.block.0.weight": t}, "flow") \
        == "cosyvoice2"
    assert checkpoints.family_of_state({"w": t}, "llm") is None
    assert checkpoints.family_of_state(llm_common, "flow") is None  # a llm.pt says nothing about flows
