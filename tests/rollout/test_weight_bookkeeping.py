"""Weight-sync bookkeeping (no vLLM needed): names, shapes, dtype, chunking, the version counter, and the
model directory a rebuilt engine or a server reload reads."""

from __future__ import annotations

import json

import pytest
import torch

from rlfold.core.errors import ConfigError
from rlfold.models.loading import load_model_and_tokenizer, resolve_model_path
from rlfold.rollout.weight_sync import CheckpointWriter, TensorSpec, WeightSync, full_tensor, specs_of


def named(*shapes: tuple[int, ...], dtype=torch.float32) -> list[tuple[str, torch.Tensor]]:
    return [(f"w{i}", torch.arange(int(torch.tensor(s).prod()), dtype=dtype).reshape(s) + i) for i, s in enumerate(shapes)]


def test_chunks_group_tensors_up_to_the_byte_budget_in_order():
    ws = named((4,), (4,), (2, 2), (8,))  # 16, 16, 16, 32 bytes in float32
    sync = WeightSync(specs_of(ws), chunk_bytes=32)
    chunks = list(sync.chunks(ws))
    assert [[n for n, _ in c] for c in chunks] == [["w0", "w1"], ["w2"], ["w3"]]
    assert sync.version == 1 and sync.last_chunks == 3 and sync.last_bytes == 80
    for (name, t), (_, src) in zip([p for c in chunks for p in c], ws):
        assert t.device.type == "cpu" and t.is_contiguous() and torch.equal(t, src)


def test_a_tensor_larger_than_the_budget_is_a_chunk_of_its_own():
    ws = named((2,), (100,), (2,))
    chunks = list(WeightSync(specs_of(ws), chunk_bytes=16).chunks(ws))
    assert [[n for n, _ in c] for c in chunks] == [["w0"], ["w1"], ["w2"]]


def test_tensors_are_cast_to_the_engine_dtype():
    ws = named((3,), (5,))
    sync = WeightSync(specs_of(ws, torch.bfloat16))
    out = [p for c in sync.chunks(ws) for p in c]
    assert all(t.dtype == torch.bfloat16 for _, t in out)
    assert torch.equal(out[1][1], ws[1][1].to(torch.bfloat16))
    assert TensorSpec((5,), torch.bfloat16).nbytes == 10


def test_unknown_name_is_an_error_with_a_suggestion():
    ws = [("model.layers.0.mlp.up_proj.weight", torch.zeros(2))]
    sync = WeightSync(specs_of(ws))
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.mlp\.up_prj\.weight.*did you mean 'model\.layers\.0"
                                          r"\.mlp\.up_proj\.weight'"):
        list(sync.chunks([("model.layers.0.mlp.up_prj.weight", torch.zeros(2))]))
    assert sync.version == 0


@pytest.mark.parametrize("stream, match", [
    ([("w0", torch.zeros(3)), ("w1", torch.zeros(4))], r"w0.*shape \(3,\).*\(4,\)"),
    ([("w0", torch.zeros(4)), ("w0", torch.zeros(4)), ("w1", torch.zeros(4))], "w0.*twice"),
    ([("w0", torch.zeros(4))], r"without 1 of the engine's 2 weights \(e\.g\. w1\).*version 0"),
    ([("w0", torch.zeros(4, dtype=torch.long)), ("w1", torch.zeros(4))], "w0.*torch.int64.*float"),
])
def test_a_bad_stream_is_an_error_and_the_version_does_not_move(stream, match):
    sync = WeightSync({"w0": TensorSpec((4,), torch.float32), "w1": TensorSpec((4,), torch.float32)})
    with pytest.raises(ConfigError, match=match):
        list(sync.chunks(stream))
    assert sync.version == 0


def test_version_counts_completed_updates_and_apply_loads_every_chunk():
    ws = named((4,), (4,), (4,))
    sync = WeightSync(specs_of(ws), chunk_bytes=16)
    loaded: list[list[str]] = []
    assert sync.apply(ws, lambda chunk: loaded.append([n for n, _ in chunk])) == 1
    assert sync.apply(iter(ws), lambda chunk: loaded.append([n for n, _ in chunk])) == 2  # a one-pass iterator
    assert loaded == [["w0"], ["w1"], ["w2"]] * 2


def test_bad_settings_are_errors():
    with pytest.raises(ConfigError, match="chunk size"):
        WeightSync({"w": TensorSpec((1,), torch.float32)}, chunk_bytes=0)
    with pytest.raises(ConfigError, match="no weights"):
        WeightSync({})


def test_full_tensor_gathers_a_sharded_dtensor(tmp_path):
    """An FSDP2 parameter is a DTensor; the engine gets the whole tensor (one-rank gloo group, file store)."""
    dist = pytest.importorskip("torch.distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        full = torch.arange(12.0).reshape(4, 3)
        d = distribute_tensor(full, mesh, [Shard(0)])
        out = list(WeightSync({"w": TensorSpec((4, 3), torch.float32)}).chunks([("w", d)]))
        assert torch.equal(out[0][0][1], full) and type(out[0][0][1]) is torch.Tensor
        assert torch.equal(full_tensor(d), full)
    finally:
        dist.destroy_process_group()


def test_checkpoint_writer_makes_a_loadable_model_directory(tmp_path):
    """The written directory loads as the model with the new weights (tied embeddings included), and a second
    write replaces the first one's shards."""
    src = resolve_model_path("tiny-arith")
    model, _ = load_model_and_tokenizer(str(src), torch.float32)
    new = {n: p.detach() + 0.01 * (i + 1) for i, (n, p) in enumerate(model.named_parameters())}
    writer = CheckpointWriter(str(src), str(tmp_path / "w"))
    sync = WeightSync(specs_of(model.named_parameters()), chunk_bytes=200_000)
    writer.write(sync.chunks((n, torch.zeros_like(t)) for n, t in new.items()))
    path = writer.write(sync.chunks(new.items()))
    index = json.loads((tmp_path / "w" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "w").glob("*.safetensors"))
    assert shards == sorted(set(index["weight_map"].values())) and len(shards) == sync.last_chunks > 1
    assert (tmp_path / "w" / "config.json").exists() and (tmp_path / "w" / "tokenizer.json").exists()
    loaded, _ = load_model_and_tokenizer(path, torch.float32)
    for n, p in loaded.named_parameters():
        assert torch.equal(p, new[n]), n
    assert torch.equal(loaded.get_output_embeddings().weight, new["model.embed_tokens.weight"])
