"""Text towers: open_clip's ``TextTransformer`` built from a ``TextSpec``."""

from __future__ import annotations

from open_clip.transformer import TextTransformer

from scaling.models.specs import TextSpec


def build_text_tower(spec: TextSpec) -> TextTransformer:
    """The causal text transformer open_clip builds for EVA CLIPs (argmax pooling, no proj bias)."""
    return TextTransformer(
        context_length=spec.context_length,
        vocab_size=spec.vocab_size,
        width=spec.width,
        heads=spec.heads,
        layers=spec.depth,
        mlp_ratio=spec.mlp_ratio,
        output_dim=spec.embed_dim,
    )


def text_layer_id(param_name: str, num_layers: int) -> int:
    """Layer id for layer-wise lr decay: 0 embeddings, i+1 block i, num_layers+1 final norm/proj."""
    name = param_name
    for prefix in ("module.", "text."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name.startswith(("token_embedding", "positional_embedding", "cls_emb")):
        return 0
    if name.startswith("transformer.resblocks."):
        return int(name.split(".")[2]) + 1
    return num_layers + 1
