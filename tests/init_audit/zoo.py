"""Models for the initialisation audit's tests: a LightningModule around any ``nn.Module``, the data it trains on,
and the bug and healthy zoos (each a function building a fresh network, seeded)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

FEATURES, CLASSES, VOCAB, SEQ = 16, 4, 20, 6
SAMPLES, BATCH = 96, 8  # 12 optimizer steps per epoch: the default steps=10 falls inside the first epoch


class Classify(pl.LightningModule):
    """Cross-entropy on ``net(x)``, plain SGD (or Adam): whatever the network, the audit sees ``self.net``."""

    def __init__(self, net: nn.Module, lr: float = 0.1, adam: bool = False) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.adam = adam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.adam:
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def dataset(kind: str = "features", seed: int = 0) -> TensorDataset:
    """``features``: ``SAMPLES x FEATURES``; ``tokens``: token ids (0 is padding); ``images``: ``1 x 8 x 8``;
    ``spike``: features whose feature 1 is 0 but in sample 5 (100). The label depends on the input, every class in
    every batch of 8 (labels cycle)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(SAMPLES) % CLASSES
    if kind == "tokens":
        x = torch.randint(1, VOCAB, (SAMPLES, SEQ), generator=gen)
        x[:, -1] = 0  # a padding position
        x[:, 0] = y + 1
        return TensorDataset(x, y)
    if kind == "images":
        x = torch.randn(SAMPLES, 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1).float()
        return TensorDataset(x, y)
    x = torch.randn(SAMPLES, FEATURES, generator=gen)
    x[:, 0] += y.float()
    if kind == "spike":
        x[:, 1] = 0.0
        x[5, 1] = 100.0
    return TensorDataset(x, y)


def loader(kind: str = "features", shuffle: bool = False) -> DataLoader:
    return DataLoader(dataset(kind), batch_size=BATCH, shuffle=shuffle)


class ZooData(pl.LightningDataModule):
    """:func:`dataset` as a DataModule (``train_set`` for CrossValidator), validated on a second draw."""

    def __init__(self, kind: str = "features") -> None:
        super().__init__()
        self.kind = kind

    def setup(self, stage: str) -> None:
        self.train_set = dataset(self.kind)
        self.val_set = dataset(self.kind, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=BATCH, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=BATCH)


def mlp(activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    return nn.Sequential(nn.Linear(FEATURES, 32), activation(), nn.Linear(32, 32), activation(), nn.Linear(32, CLASSES))


def _fill(net: nn.Module, value: float) -> nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
    return net


class MeanTokens(nn.Module):
    """Embedding, mean over the sequence, then ``head``."""

    def __init__(self, head: nn.Module, padding_idx: int | None = None, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, padding_idx=padding_idx)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(dim=1))


# --------------------------------------------------------------------------------------------- the bug zoo
# Each: (network builder, data kind, the layers that must be named).


def zero_mlp_tanh() -> nn.Module:
    return _fill(mlp(nn.Tanh), 0.0)


def zero_mlp_relu() -> nn.Module:
    return _fill(mlp(nn.ReLU), 0.0)


def constant_mlp() -> nn.Module:
    return _fill(mlp(nn.Tanh), 0.1)


def copied_filters() -> nn.Module:
    """Every filter a copy of filter 0, and a head that treats the channels alike (its columns are copies too)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES))
    with torch.no_grad():
        conv, head = net[0], net[4]
        conv.weight.copy_(conv.weight[:1].expand_as(conv.weight))
        conv.bias.fill_(0.05)  # type: ignore[union-attr]
        head.weight.copy_(head.weight[:, :1].expand_as(head.weight))
    return net


def zero_second_hidden() -> nn.Module:
    torch.manual_seed(0)
    net = mlp(nn.ReLU)
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.zero_()
    return net


def constant_after_embedding() -> nn.Module:
    """An init loop that sets every ``nn.Linear`` to a constant (the Embedding keeps torch's default)."""
    torch.manual_seed(0)
    net = MeanTokens(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, CLASSES)))
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.constant_(module.weight, 0.1)
            nn.init.constant_(module.bias, 0.0)
    return net


BUG_ZOO: dict[str, tuple[Callable[[], nn.Module], str, list[str]]] = {
    "all-zero MLP, tanh": (zero_mlp_tanh, "features", ["net.0", "net.2"]),
    "all-zero MLP, ReLU": (zero_mlp_relu, "features", ["net.0", "net.2"]),
    "constant init": (constant_mlp, "features", ["net.0", "net.2"]),
    "conv filters copies of one filter": (copied_filters, "images", ["net.0"]),
    "zero second hidden layer": (zero_second_hidden, "features", ["net.2"]),
    "constant Linear after an Embedding": (constant_after_embedding, "tokens", ["net.head.0"]),
}


# ----------------------------------------------------------------------------------------- the healthy zoo


def default_mlp() -> nn.Module:
    torch.manual_seed(0)
    return mlp(nn.ReLU)


def default_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(8, CLASSES),
    )  # fmt: skip


class EncoderClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def transformer_encoder() -> nn.Module:
    torch.manual_seed(0)
    return EncoderClassifier()


def zero_head() -> nn.Module:
    torch.manual_seed(0)
    net = mlp(nn.ReLU)
    nn.init.zeros_(net[4].weight)
    nn.init.zeros_(net[4].bias)
    return net


class Residual(nn.Module):
    """``x + alpha * branch(x)``: ReZero (``alpha`` a parameter at 0) or Fixup (the branch's last layer at 0)."""

    def __init__(self, width: int, rezero: bool) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.alpha = nn.Parameter(torch.zeros(())) if rezero else None
        if not rezero:
            nn.init.zeros_(self.branch[2].weight)
            nn.init.zeros_(self.branch[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return x + (self.alpha * out if self.alpha is not None else out)


def rezero_fixup() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(FEATURES, 32), Residual(32, rezero=True), Residual(32, rezero=False), nn.Linear(32, CLASSES)
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet block with ``zero_init_residual=True``: the last BatchNorm's weight starts at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def resnet_block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), BasicBlock(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, CLASSES),
    )  # fmt: skip


def embedding_layernorm() -> nn.Module:
    torch.manual_seed(0)
    head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    return MeanTokens(head, padding_idx=0)


class Bert(nn.Module):
    """A randomly initialised Hugging Face BERT from a tiny ``BertConfig`` (nothing downloaded)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=SEQ, num_labels=CLASSES, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
        self.bert = BertForSequenceClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=x, attention_mask=(x != 0).long()).logits


def bert() -> nn.Module:
    torch.manual_seed(0)
    return Bert()


HEALTHY_ZOO: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "torch default MLP": (default_mlp, "features"),
    "torch default CNN": (default_cnn, "images"),
    "nn.TransformerEncoderLayer": (transformer_encoder, "tokens"),
    "zero-initialised classifier head": (zero_head, "features"),
    "ReZero and Fixup residual branches": (rezero_fixup, "features"),
    "ResNet block, zero_init_residual": (resnet_block, "images"),
    "Embedding(padding_idx=0) + LayerNorm + zero biases": (embedding_layernorm, "tokens"),
    "Hugging Face BERT, random init": (bert, "tokens"),
}
