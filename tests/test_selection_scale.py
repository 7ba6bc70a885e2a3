"""Selection at scale: the on-disk embedding store, the selection rules on it, and streamed caption pools.

Every rule must choose exactly what it chooses on the same embeddings held in memory, and a streamed pool must give
the fingerprint, embeddings and prompts of the same rows held in memory.
"""

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from diffusers_edge.caption_pool import CaptionPool, caption_pool, embed_caption_stream, source_fingerprint
from diffusers_edge.pipeline_edge import EDGEPipeline
from diffusers_edge.selection import embed_captions, kcenter_greedy, kmeans, kmeans_nearest, select_indices
from diffusers_edge.selection.algorithms import _nearest_points, herding
from diffusers_edge.selection.store import CHUNK_ROWS, EmbeddingStore, iter_chunks, store_key

FAST = {"num_inference_steps": 2, "progress": False}


def to_store(points: torch.Tensor, folder, piece: int = 3000) -> EmbeddingStore:
    store = EmbeddingStore.create(folder, len(points), points.shape[1], {"test": str(folder)})
    for chunk in points.split(piece):
        store.append(chunk)
    return store


@pytest.fixture(scope="module")
def pool_points():
    """More rows than one chunk, with exact duplicates (as CC3M's repeated captions give)."""
    generator = torch.Generator().manual_seed(0)
    points = torch.nn.functional.normalize(torch.randn(CHUNK_ROWS + 1500, 8, generator=generator), dim=-1)
    points[100:140] = points[7]  # 41 identical points
    points[CHUNK_ROWS + 3] = points[5]  # a duplicate across the chunk boundary
    return points


def test_store_writes_reads_and_resumes(tmp_path):
    values = torch.arange(21.0).reshape(7, 3)
    store = EmbeddingStore.create(tmp_path / "s", 7, 3, {"model": "m"})
    store.append(values[:4])
    assert not store.complete and store.rows_done == 4
    with pytest.raises(RuntimeError, match="holds 4 of 7 rows"):
        store.load()
    reopened = EmbeddingStore(tmp_path / "s")  # what a resumed run sees
    assert reopened.rows_done == 4
    reopened.append(values[4:])
    assert reopened.complete and torch.equal(reopened.load(), values)
    assert torch.equal(reopened.gather([6, 0, 3]), values[[6, 0, 3]])
    assert [(start, chunk.tolist()) for start, chunk in reopened.chunks(rows=3)][2] == (6, [[18.0, 19.0, 20.0]])
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "s" / "embeddings.npy")), values)  # a plain .npy
    with pytest.raises(ValueError, match="do not fit"):
        reopened.append(values[:1])
    with pytest.raises(ValueError, match=r"shape \[n, 3\]"):
        EmbeddingStore.create(tmp_path / "t", 2, 3, {}).append(torch.zeros(2, 4))


def test_open_or_create_reuses_a_store_only_for_the_same_model_and_source(tmp_path):
    info = {"model": "clip-a", "source": "f" * 64}
    store = EmbeddingStore.open_or_create(tmp_path, 2, 3, info)
    store.append(torch.ones(2, 3))
    assert store.folder.name == store_key(info)
    assert EmbeddingStore.open_or_create(tmp_path, 2, 3, info).complete
    assert not EmbeddingStore.open_or_create(tmp_path, 2, 3, {**info, "model": "clip-b"}).complete
    assert not EmbeddingStore.open_or_create(tmp_path, 5, 3, info).complete  # same key, other shape: rebuilt


def test_selection_rules_choose_the_same_from_a_store_as_from_memory(pool_points, tmp_path):
    store = to_store(pool_points, tmp_path / "pool")
    assert len(list(iter_chunks(store))) == 2
    assert kcenter_greedy(store, 60, seed=3) == kcenter_greedy(pool_points, 60, seed=3)
    assert herding(store, 40) == herding(pool_points, 40)
    assert kmeans_nearest(store, 30, seed=1) == kmeans_nearest(pool_points, 30, seed=1)
    # a pool larger than 30 centroids x 16 points is fitted on a seeded sample: the same sample from both
    assert kmeans_nearest(store, 30, seed=1, max_points_per_centroid=16) == kmeans_nearest(
        pool_points, 30, seed=1, max_points_per_centroid=16
    )
    assert select_indices(len(store), 50, "kcenter", seed=2, embeddings=store) == kcenter_greedy(pool_points, 50, 2)


def test_kcenter_never_repeats_a_duplicate_and_kmeans_nearest_gives_distinct_points(pool_points):
    chosen = kcenter_greedy(pool_points, 300, seed=0)
    assert len(set(chosen)) == 300
    assert len({tuple(pool_points[i].tolist()) for i in chosen}) == 300  # never two copies of one point
    nearest = kmeans_nearest(pool_points, 64, seed=0)
    assert len(set(nearest)) == 64


def test_nearest_points_orders_by_distance_then_index_and_falls_back_past_its_candidates():
    points = torch.tensor([[0.0], [3.0], [1.0], [1.0], [1.0], [5.0]])
    distances, indices = _nearest_points(points, torch.tensor([[1.0], [4.0]]), keep=4)
    assert indices[:, 0].tolist() == [2, 3, 4, 0]  # three ties at distance 0: lowest index first
    assert indices[:, 1].tolist() == [1, 5, 2, 3]
    assert distances[:, 1].tolist() == [1.0, 1.0, 9.0, 9.0]
    # nine copies of one point and one other: every centroid but one lands on the copies, whose 8 candidates run
    # out, so the later centroids take the next copies from an extra pass
    copies = torch.cat([torch.zeros(9, 2), torch.tensor([[10.0, 10.0]])])
    assert sorted(kmeans_nearest(copies, 10, seed=0)) == list(range(10))


def test_kmeans_on_a_sample_depends_on_the_seed_and_stays_near_the_full_fit(pool_points):
    full = kmeans(pool_points, 8, seed=0)
    sampled = kmeans(pool_points, 8, seed=0, max_points_per_centroid=64)
    assert sampled.shape == full.shape and not torch.equal(sampled, full)
    assert torch.equal(sampled, kmeans(pool_points, 8, seed=0, max_points_per_centroid=64))


# ------------------------------------------------------------------------------------------- streamed pools


def write_caption_shards(folder, rows: list[list[str]], per_shard: int = 7) -> list[str]:
    """Parquet shards in the normalized caption columns (no images: selection reads only captions)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, len(rows), per_shard)):
        path = folder / f"shard-{shard:03d}.parquet"
        part = rows[start : start + per_shard]
        ids = [f"img{start + i}" for i in range(len(part))]
        pq.write_table(pa.table({"captions": pa.array(part, pa.list_(pa.string())), "image_id": ids}), path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def caption_rows():
    words = ["red", "blue", "green", "circle", "square", "star", "small", "large", "left", "right", "a", "the"]
    rng = np.random.default_rng(0)
    rows = [[" ".join(rng.choice(words, size=rng.integers(3, 7))) for _ in range(rng.integers(1, 4))]
            for _ in range(40)]  # fmt: skip
    rows[5] = rows[4]  # duplicate captions
    return rows


@pytest.fixture
def streamed(caption_rows, tmp_path):
    files = write_caption_shards(tmp_path / "shards", caption_rows)
    return datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)


def held(caption_rows) -> datasets.Dataset:
    ids = [f"img{i}" for i in range(len(caption_rows))]
    return datasets.Dataset.from_dict({"captions": caption_rows, "image_id": ids})


def test_a_streamed_pool_is_counted_without_holding_its_captions_and_matches_memory(caption_rows, streamed):
    pool, reference = caption_pool(streamed), caption_pool(held(caption_rows))
    assert pool.captions is None and pool.stream is streamed
    assert (pool.size, pool.fingerprint) == (reference.size, reference.fingerprint)
    assert reference.fingerprint == source_fingerprint(reference.captions, reference.owners)
    indices = [17, 0, reference.size - 1, 4]
    assert pool.take(indices) == reference.take(indices)
    assert list(pool) == list(zip(reference.captions, reference.owners))


def test_streamed_embeddings_go_to_a_store_equal_to_memory_and_are_reused(
    caption_rows, streamed, tiny_clip_path, tmp_path
):
    model, processor = CLIPModel.from_pretrained(tiny_clip_path), CLIPProcessor.from_pretrained(tiny_clip_path)
    pool = caption_pool(streamed)
    store = pool.embeddings(model, processor, cache_dir=tmp_path / "cache", batch_size=8, progress=False)
    in_memory = caption_pool(held(caption_rows)).embeddings(model, processor, batch_size=8)
    assert isinstance(store, EmbeddingStore) and store.complete
    assert torch.equal(store.load(), in_memory)
    assert store.info["source"] == pool.fingerprint and store.info["model"] == str(tiny_clip_path)
    mtime = store.path.stat().st_mtime_ns
    again = pool.embeddings(model, processor, cache_dir=tmp_path / "cache", batch_size=8, progress=False)
    assert again.folder == store.folder and again.path.stat().st_mtime_ns == mtime  # not embedded twice


def test_an_interrupted_embedding_pass_resumes_to_the_same_numbers(caption_rows, tiny_clip_path, tmp_path):
    model, processor = CLIPModel.from_pretrained(tiny_clip_path), CLIPProcessor.from_pretrained(tiny_clip_path)
    captions = [c for row in caption_rows for c in row]
    store = EmbeddingStore.create(tmp_path / "s", len(captions), model.config.projection_dim, {"t": 1})

    def dying(limit):
        for index, caption in enumerate(captions):
            if index == limit:
                raise KeyboardInterrupt
            yield caption

    with pytest.raises(KeyboardInterrupt):
        embed_caption_stream(dying(21), store, model, processor, batch_size=4, progress=False, flush_batches=2)
    assert EmbeddingStore(tmp_path / "s").rows_done == 16  # two flushes of two batches of four
    resumed = embed_caption_stream(iter(captions), EmbeddingStore(tmp_path / "s"), model, processor,
                                   batch_size=4, progress=False, flush_batches=2)  # fmt: skip
    assert torch.equal(resumed.load(), embed_captions(captions, model, processor, batch_size=4))
    with pytest.raises(RuntimeError, match="did it change"):
        embed_caption_stream(iter(captions[:5]), EmbeddingStore.create(tmp_path / "u", 9, 16, {}), model, processor)


def test_streamed_pool_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"text": ["a cat"]}), path)
    stream = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
    with pytest.raises(ValueError, match=r"no 'captions' column \(columns: \['text'\]\)"):
        caption_pool(stream)
    pq.write_table(pa.table({"captions": [["a cat"], [""]], "image_id": ["x", "y"]}), path)
    stream = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
    with pytest.raises(ValueError, match=r"source row 1 \(image_id='y'\)"):
        caption_pool(stream)
    assert isinstance(caption_pool(["a"]), CaptionPool)


@pytest.mark.parametrize("selection", ["random", "kcenter"])
def test_distill_from_a_stream_plans_what_the_in_memory_source_plans(
    selection, caption_rows, streamed, tiny_sd_path, tiny_clip_path, tmp_path
):
    clip = {"clip_model": CLIPModel.from_pretrained(tiny_clip_path),
            "clip_processor": CLIPProcessor.from_pretrained(tiny_clip_path)}  # fmt: skip
    pipe = EDGEPipeline.from_pretrained(tiny_sd_path, **clip)
    pipe.set_progress_bar_config(disable=True)
    common = {"num_pairs": 5, "captions_per_image": 1, "selection": selection, "seed": 3, **FAST}
    from_stream = pipe.distill(streamed, output_dir=tmp_path / "s", cache_dir=tmp_path / "cache", **common)
    from_memory = pipe.distill(held(caption_rows), output_dir=tmp_path / "m", **common)
    for name in ("edge_plan.json", "edge_manifest.json"):
        assert (tmp_path / "s" / name).read_text() == (tmp_path / "m" / name).read_text()
    assert from_stream["prompt"] == from_memory["prompt"] and from_stream["source_image_id"][0].startswith("img")
    assert (tmp_path / "cache").is_dir() == (selection == "kcenter")  # random needs no embeddings
    plan = json.loads((tmp_path / "s" / "edge_plan.json").read_text())
    captions = [c for row in caption_rows for c in row]
    assert plan["prompts"] == [captions[i] for i in select_indices(len(captions), 5, selection, seed=3, embeddings=(
        embed_captions(captions, clip["clip_model"], clip["clip_processor"]) if selection == "kcenter" else None
    ))]


# ------------------------------------------------------------------------------------------ streamed coresets


@pytest.fixture(scope="module")
def shapes_pool():
    from diffusers_edge.shapes.dataset import load_captioned_shapes

    return load_captioned_shapes(num_train=30, num_val=1, num_test=1)["train"]


@pytest.mark.parametrize(
    ("method", "space", "captions_per_image", "num_pairs"),
    [("random", "joint", 1, 7), ("herding", "joint", 2, 9), ("kcenter", "text", None, 23), ("kcenter", "image", 1, 6)],
)
def test_a_streamed_coreset_equals_the_in_memory_one(
    method, space, captions_per_image, num_pairs, shapes_pool, tiny_clip_path, tmp_path
):
    from diffusers_edge.selection.coreset import select_coreset

    common = {"space": space, "captions_per_image": captions_per_image, "clip_model": tiny_clip_path, "seed": 4,
              "device": "cpu"}  # fmt: skip
    held_coreset = select_coreset(shapes_pool, method, num_pairs, **common)
    streamed_coreset = select_coreset(
        shapes_pool.to_iterable_dataset(num_shards=3), method, num_pairs, cache_dir=tmp_path / "stores", **common
    )
    assert streamed_coreset["image_id"] == held_coreset["image_id"]
    assert streamed_coreset["captions"] == held_coreset["captions"]
    assert sum(map(len, streamed_coreset["captions"])) == num_pairs
    raw = streamed_coreset.cast_column("image", datasets.Image(decode=False))["image"]
    expected = held_coreset.cast_column("image", datasets.Image(decode=False))["image"]
    assert [r["bytes"] for r in raw] == [e["bytes"] for e in expected]  # stored as they were, not re-encoded
    stores = len(list((tmp_path / "stores").iterdir())) if method != "random" else 0
    assert stores == {"random": 0, "herding": 3, "kcenter": 2 if space == "text" else 1}[method]  # no needless pass


def test_a_streamed_coreset_refuses_what_needs_the_whole_pool(shapes_pool):
    from diffusers_edge.selection.coreset import select_coreset

    stream = shapes_pool.to_iterable_dataset()
    with pytest.raises(ValueError, match="'forgetting' baseline needs the whole pool in memory"):
        select_coreset(stream, "forgetting", 5)
    with pytest.raises(ValueError, match="exceeds the pool: 30 images with captions_per_image=1 give 30 pairs"):
        select_coreset(stream, "random", 31)
    with pytest.raises(ValueError, match="captions_per_image must be >= 1"):
        select_coreset(stream, "random", 3, captions_per_image=0)
