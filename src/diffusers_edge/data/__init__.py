"""Image-text data: the normalized form, the embedded captioned-shapes dataset, source adapters, distilled sets."""
