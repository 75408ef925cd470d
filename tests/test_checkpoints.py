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
    assert f"calls the global {__name__}._mark" in msg  # says what the payload would have called
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


# --- issue 10: honest messages ---------------------------------------------------------------------------


class _System:
    """A payload calling os.system: torch refuses its module outright ("module posix is blocked")."""

    def __reduce__(self):
        return (os.system, ("echo never run",))


def test_a_blocked_module_payload_names_the_global(tmp_path):
    path = tmp_path / "system.pt"
    torch.save({"w": torch.zeros(2), "x": _System()}, path)
    for mmap in (False, True):
        with pytest.raises(CheckpointError) as err:
            checkpoints.load(path, mmap=mmap)
        msg = str(err.value)
        assert "refusing to load" in msg and "pickle payload" in msg
        assert f"{os.system.__module__}.system" in msg, msg  # posix.system: the global it wanted
        assert "PyTorch 2.6" not in msg  # torch's advice to load unsafely is not repeated


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_checkpoints_say_so(tmp_path, legacy):
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.randn(2000), "epoch": 1}, whole, _use_new_zipfile_serialization=not legacy)
    data = whole.read_bytes()
    for keep in (16, len(data) // 2, len(data) - 30, len(data) - 1):
        cut = tmp_path / f"cut{keep}.pt"
        cut.write_bytes(data[:keep])
        for mmap in (False, True):
            with pytest.raises(CheckpointError) as err:
                checkpoints.load(cut, mmap=mmap)
            msg = str(err.value)
            assert f"checkpoint {cut} is truncated" in msg, (keep, mmap, msg)
            assert f"{keep} bytes" in msg
            assert err.value.hint and "interrupted" in err.value.hint


def test_a_damaged_tensor_is_found_by_its_crc(tmp_path):
    """torch reads a flipped byte in a tensor's storage as a value (no checksum): `verify` checks the zip's CRCs."""
    import struct
    import zipfile

    path = tmp_path / "flip.pt"
    torch.save({"w": torch.randn(4000)}, path)
    checkpoints.verify(path)
    info = next(i for i in zipfile.ZipFile(path).infolist() if i.filename.endswith("data/0"))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    first = info.header_offset + 30 + name_len + extra_len
    data[first + 1000: first + 1008] = b"\xff" * 8
    path.write_bytes(bytes(data))
    assert checkpoints.load(path)["w"].isnan().any()  # what torch alone makes of it
    with pytest.raises(CheckpointError, match=r"is corrupt: its member flip/data/0 fails its CRC check"):
        checkpoints.verify(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    checkpoints.verify(legacy)  # no checksums to check: nothing to say


def test_nonfinite_names_the_tensor():
    ok = {"a": torch.ones(3), "n": torch.tensor([1, 2]), "epoch": 3}
    assert checkpoints.nonfinite(ok) is None
    bad = {"a": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])}
    assert checkpoints.nonfinite(bad) == ("b.weight", 1, 2, 4)
    assert checkpoints.nonfinite({"h": torch.tensor([float("inf")], dtype=torch.float16)}) == ("h", 0, 1, 1)
