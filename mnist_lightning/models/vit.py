"""Vision Transformers: a pre-norm ViT with inspectable attention, and one on torch's ``nn.TransformerEncoder``."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mnist_lightning.errors import ConfigError
from mnist_lightning.models.base import NUM_CLASSES, MNISTClassifier

IMAGE_SIDE = 28
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def check_patch_size(patch_size: int) -> int:
    """The number of patches of a 28×28 image, or a ValueError if ``patch_size`` does not tile it."""
    if patch_size < 1 or IMAGE_SIDE % patch_size:
        divisors = ", ".join(str(d) for d in range(1, IMAGE_SIDE + 1) if IMAGE_SIDE % d == 0)
        raise ConfigError(
            f"patch_size={patch_size} does not divide the {IMAGE_SIDE}-pixel image side; choose one of {divisors}"
        )
    return (IMAGE_SIDE // patch_size) ** 2


def network_settings(network: type[nn.Module], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The classifier's ``settings`` (its hparams) that ``network``'s constructor takes: the classifier holds their
    defaults and documentation, the network only uses them."""
    return {name: settings[name] for name in inspect.signature(network).parameters}


class PatchEmbedding(nn.Module):
    """Cut ``(B, 1, 28, 28)`` images into ``p×p`` patches, project each to ``dim``, prepend a trained class token and
    add a learned position embedding: ``(B, 1 + (28/p)², dim)``."""

    def __init__(self, *, patch_size: int, dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        num_patches = check_patch_size(patch_size)
        self.project = nn.Linear(patch_size * patch_size, dim)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.position = nn.Parameter(torch.randn(1, num_patches + 1, dim) * 0.02)

    def forward(self, images: Tensor) -> Tensor:
        p = self.patch_size
        patches = rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=p, p2=p)
        tokens = self.project(patches)
        class_token = self.class_token.expand(len(tokens), -1, -1)
        return torch.cat([class_token, tokens], dim=1) + self.position


class SelfAttention(nn.Module):
    """Multi-head self-attention without biases on q/k/v and on the output projection.

    The normal path uses the fused ``F.scaled_dot_product_attention``; with ``return_attention`` it computes the
    same result explicitly and also returns the attention probabilities ``(B, heads, tokens, tokens)``, each row a
    softmax over the keys.
    """

    def __init__(self, *, dim: int, heads: int, head_dim: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, tokens: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        q, k, v = rearrange(self.to_qkv(tokens), "b t (qkv h d) -> qkv b h t d", qkv=3, h=self.heads)
        dropout = self.dropout if self.training else 0.0
        probs = None
        if return_attention:
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (b, h, query, key)
            probs = scores.softmax(dim=-1)
            mixed = F.dropout(probs, dropout, self.training) @ v
        else:
            mixed = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.to_out(rearrange(mixed, "b h t d -> b t (h d)")), probs


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attention(LayerNorm(x))``, then ``x + MLP(LayerNorm(x))``."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim=dim, heads=heads, head_dim=head_dim, dropout=dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, tokens: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        attended, probs = self.attention(self.attention_norm(tokens), return_attention)
        tokens = tokens + attended
        return tokens + self.mlp(self.mlp_norm(tokens)), probs


class ViT(nn.Module):
    """Patch embedding, ``depth`` pre-norm transformer blocks, LayerNorm and a linear classifier on the class token.

    The settings (and their defaults) are :class:`ViTClassifier`'s; the heads are concatenated to
    ``heads * head_dim`` and projected back to ``dim``.
    """

    def __init__(
        self,
        *,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        head_dim: int,
        mlp_dim: int,
        dropout: float,
        activation: str,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.embedding = PatchEmbedding(patch_size=patch_size, dim=dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                dim=dim, heads=heads, head_dim=head_dim, mlp_dim=mlp_dim, dropout=dropout, activation=activation
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, NUM_CLASSES)

    def forward(self, images: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``(B, 10)``; with ``return_attention`` also the attention probabilities of every block and head,
        ``(depth, B, heads, tokens, tokens)`` with the class token first (rows: queries, columns: keys)."""
        tokens = self.embedding(images)
        maps = []
        for block in self.blocks:
            tokens, probs = block(tokens, return_attention)
            maps.append(probs)
        logits = self.classifier(self.norm(tokens[:, 0]))
        return (logits, torch.stack(maps)) if return_attention else logits


class ViTClassifier(MNISTClassifier):
    """A Vision Transformer (see :class:`ViT`); the defaults are the ``vit`` preset.

    Args:
        patch_size: side of the square patches; must divide 28 (7 gives 16 tokens plus the class token).
        dim: token width.
        depth: number of pre-norm transformer blocks.
        heads: attention heads per block.
        head_dim: width of each attention head.
        mlp_dim: hidden width of each block's MLP.
        dropout: dropout on attention probabilities and in each block's MLP.
        activation: ``relu`` or ``gelu`` inside each block's MLP.
        **kwargs: optimizer and schedule settings of :class:`MNISTClassifier`.
    """

    def __init__(
        self,
        *,
        patch_size: int = 7,
        dim: int = 64,
        depth: int = 6,
        heads: int = 8,
        head_dim: int = 64,
        mlp_dim: int = 128,
        dropout: float = 0.0,
        activation: Literal["relu", "gelu"] = "relu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.net = ViT(**network_settings(ViT, self.hparams))

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> Tensor:
        """Attention probabilities ``(depth, B, heads, tokens, tokens)`` for normalized images ``(B, 1, 28, 28)``.

        Each row (a query token) is a softmax over the key tokens; token 0 is the class token. Call ``eval()``
        first when dropout is set, so the maps are the ones used at test time.
        """
        _, maps = self.predicting_net(images.to(self.device), return_attention=True)
        return maps


class TransformerEncoderViT(nn.Module):
    """Patch embedding, torch's ``nn.TransformerEncoder`` (batch first) and a head on the class token; the settings
    (and their defaults) are :class:`TransformerEncoderClassifier`'s.

    The head is ``dim → head_sizes[0] → ... → head_sizes[-1] → tanh → 10``: as in the notebook this comes from,
    the only nonlinearity of the head is the tanh after its last hidden layer.
    """

    def __init__(
        self,
        *,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        feedforward_dim: int,
        dropout: float,
        activation: str,
        norm_first: bool,
        head_sizes: list[int],
    ) -> None:
        super().__init__()
        self.embedding = PatchEmbedding(patch_size=patch_size, dim=dim)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=feedforward_dim,
            dropout=dropout,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        head: list[nn.Module] = []
        width = dim
        for size in head_sizes:
            head.append(nn.Linear(width, size))
            width = size
        head += [nn.Tanh(), nn.Linear(width, NUM_CLASSES)]
        self.head = nn.Sequential(*head)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``."""
        tokens = self.encoder(self.embedding(images))  # (B, tokens, dim): batch_first
        return self.head(tokens[:, 0])

    def attention_maps(self, images: Tensor) -> Tensor:
        """Attention probabilities ``(depth, B, heads, tokens, tokens)``, like :meth:`ViT.forward`'s.

        torch's encoder layers do not return their attention (they call ``self_attn`` with ``need_weights=False``,
        or a fused kernel), so a pre-hook on each layer calls that layer's ``self_attn`` a second time, with
        ``need_weights=True`` and per-head weights, on exactly the tokens its own attention sees (``norm1`` of the
        layer's input for pre-norm layers, the input itself for post-norm ones), while the encoder runs as usual.
        """
        maps: list[Tensor] = []

        def record(layer: nn.TransformerEncoderLayer, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            tokens = args[0] if args else kwargs["src"]
            seen = layer.norm1(tokens) if layer.norm_first else tokens
            _, weights = layer.self_attn(
                seen,
                seen,
                seen,
                attn_mask=kwargs.get("src_mask"),
                key_padding_mask=kwargs.get("src_key_padding_mask"),
                need_weights=True,
                average_attn_weights=False,
            )
            maps.append(weights)  # (B, heads, queries, keys), each row a softmax over the keys

        hooks = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in self.encoder.layers]
        try:
            self(images)
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack(maps)


class TransformerEncoderClassifier(MNISTClassifier):
    """A ViT on torch's ``nn.TransformerEncoder`` (see :class:`TransformerEncoderViT`); defaults: ``vit_encoder``.

    Args:
        patch_size: side of the square patches; must divide 28.
        dim: token width (``d_model``).
        depth: encoder layers.
        heads: attention heads.
        feedforward_dim: hidden width of each layer's feed-forward network.
        dropout: torch's encoder-layer dropout.
        activation: ``relu`` or ``gelu`` in the feed-forward network.
        norm_first: pre-norm layers instead of torch's default post-norm.
        head_sizes: hidden widths of the classification head before its tanh.
        **kwargs: optimizer and schedule settings of :class:`MNISTClassifier`.
    """

    def __init__(
        self,
        *,
        patch_size: int = 7,
        dim: int = 64,
        depth: int = 4,
        heads: int = 8,
        feedforward_dim: int = 3000,
        dropout: float = 0.1,
        activation: Literal["relu", "gelu"] = "gelu",
        norm_first: bool = False,
        head_sizes: list[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        settings = network_settings(TransformerEncoderViT, self.hparams)
        self.net = TransformerEncoderViT(**settings | {"head_sizes": [250, 100] if head_sizes is None else head_sizes})

    @torch.no_grad()
    def attention_maps(self, images: Tensor) -> Tensor:
        """Attention probabilities ``(depth, B, heads, tokens, tokens)`` for normalized images ``(B, 1, 28, 28)``.

        The same layout as :meth:`ViTClassifier.attention_maps`: each row (a query token) is a softmax over the key
        tokens and token 0 is the class token. Call ``eval()`` first when dropout is set (the default 0.1): in
        training mode the weights are the dropped-out ones.
        """
        return self.predicting_net.attention_maps(images.to(self.device))
