"""The offline world of diffusers-edge: the captioned-shapes data, its scorers and the tiny stacks trained on it.

- `diffusers_edge.shapes.objects`: one or two shapes: attribute space, rendering, captions, parsing.
- `diffusers_edge.shapes.scenes`: the `scenes` world (2-4 objects on a 2x2 grid) and its caption claims.
- `diffusers_edge.shapes.dataset`: the captioned-shapes `datasets` builder, `load_captioned_shapes`, statistics.
- `diffusers_edge.shapes.judge`: the attribute judge that scores prompt following on generated images.
- `diffusers_edge.shapes.tokenization`: CLIP and BERT tokenizers built offline from the caption vocabulary.
- `diffusers_edge.shapes.stack`: where the shipped tiny stacks (`assets/`) are installed.
- `diffusers_edge.shapes.demo`: the demo, EDGE end to end on this world (config, run, diagnostics, report).

Nothing is imported here, so `import diffusers_edge.shapes.stack` stays cheap; import the submodules you need.

Example:
    >>> from diffusers_edge.shapes.dataset import load_captioned_shapes
    >>> load_captioned_shapes(num_train=4, num_val=0, num_test=0)["train"].num_rows
    4
"""
