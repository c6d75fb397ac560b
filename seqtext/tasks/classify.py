"""Text classification (e.g. IMDB sentiment): pooled encoder states → label."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batching import Batch
from ..errors import SeqtextError
from ..nn.heads import ClassifierHead
from .base import Ensemble, Net, Split, Task, fingerprint, require_column, row_locator, shown


def truncate(ids: list[int], max_length: int) -> list[int]:
    """Keep the head and the tail of a long text: reviews state their verdict at either end."""
    if not max_length or len(ids) <= max_length:
        return ids
    head = max_length // 2
    return ids[:head] + ids[len(ids) - (max_length - head):]


def label_values(ds, col: str, where) -> set:
    """The distinct labels (nulls left out) of a column without label names: one string or number a
    row, all of one type. A JSON file gives a column of lists, objects or mixed types another feature
    type; its rows are then read to name the first bad one (``where(i)``: see base.row_locator)."""
    import datasets

    if isinstance(ds.features[col], datasets.Value):
        return set(ds.unique(col)) - {None}
    first: dict[type, tuple[int, object]] = {}  # the first row of each type of label
    values = set()
    for i, value in enumerate(ds[col]):
        if isinstance(value, (list, dict)):
            raise SeqtextError(f"{where(i)}: label column {col!r} must hold a single label (a string or a "
                               f"number) per row, got {shown(value)}")
        if value is not None:
            first.setdefault(type(value), (i, value))
            values.add(value)
    if len(first) > 1:
        (i, a), (j, b) = sorted(first.values(), key=lambda x: x[0])[:2]
        raise SeqtextError(f"{where(j)}: label {shown(b)}, but {where(i)} has {shown(a)}: write every label "
                           f"in column {col!r} the same way (all strings or all integers)")
    return values


class ClassifyTask(Task):
    name = "classify"
    metric = "accuracy"

    @property
    def labels(self) -> list[str]:
        return self.meta["labels"]

    def fit_labels(self, train) -> None:
        if "labels" in self.meta:
            return
        col = self.recipe.data.label_column
        require_column(train, col, "train data", "set [data] label_column", kind="label", hide=("tokens",))
        feature = train.features[col]
        names = self.recipe.data.label_names
        if names:
            if len(set(map(str, names))) != len(names) or len(names) < 2:
                raise SeqtextError(f"[data] label_names: expected 2 or more different names, got {names!r}")
            if hasattr(feature, "names") and list(feature.names) != [str(n) for n in names]:
                raise SeqtextError(f"[data] label_names {names!r} differ from the names the data gives its labels "
                                   f"({list(feature.names)!r}); leave label_names out or make them the same")
            self.meta["labels"] = [str(name) for name in names]
        elif hasattr(feature, "names"):  # datasets.ClassLabel
            self.meta["labels"] = list(feature.names)
        else:
            values = label_values(train, col, self.row_names.get("train") or row_locator(train, "train"))
            self.meta["labels"] = [str(v) for v in sorted(values, key=lambda v: (str(type(v)), v))]
        if len(self.labels) < 2:
            raise SeqtextError(f"train data: label column {col!r} has fewer than 2 distinct labels")

    def missing_targets(self, ds) -> str | None:
        col = self.recipe.data.label_column
        return None if col in ds.column_names else f"label column {col!r} ([data] label_column)"

    def encode_split(self, ds, split: str) -> Split:
        col, vocab = self.recipe.data.label_column, self.vocab
        index = {name: i for i, name in enumerate(self.labels)}
        max_length = self.recipe.data.max_length
        has_labels = col in ds.column_names
        # what an integer label means: the recipe's names, else the data's own (a ClassLabel)
        own_names = getattr(ds.features.get(col), "names", None) if has_labels else None
        class_names = self.recipe.data.label_names or own_names or None
        source = "[data] label_names" if self.recipe.data.label_names else "the data's label names"

        where = self.row_names.get(split) or row_locator(ds, split)  # rows as the raw split numbered them

        def label_id(value, i):
            if value is None:
                raise SeqtextError(f"{where(i)}: no label (null in column {col!r}); every row needs one")
            number = isinstance(value, int) and not isinstance(value, bool)
            if number and class_names is not None and not 0 <= value < len(class_names):
                raise SeqtextError(f"{where(i)}: label {value} has no name in {source} ({len(class_names)} "
                                   "names); is this split unlabelled?")
            name = class_names[value] if number and class_names is not None else str(value)
            if name not in index:
                raise SeqtextError(f"{where(i)}: label {name!r} was not seen in training "
                                   f"(known: {', '.join(self.labels)})")
            return index[name]

        def fn(batch, indices):
            out = {"ids": [truncate(vocab.encode(t), max_length) or [vocab.unk_id] for t in batch["tokens"]]}
            if has_labels:
                out["target"] = [label_id(v, i) for v, i in zip(batch[col], indices)]
            return out

        key = (fingerprint(*vocab.itos), self.labels, max_length, has_labels)
        ds = self._map(ds, fn, f"encode {split}", *key, remove=["tokens"], with_indices=True)
        return Split(ds, ("ids",), ("target",) if has_labels else ())

    def build_member(self) -> Net:
        m = self.recipe.model
        embedder = self.make_embedder()
        encoder = self.make_encoder(embedder.output_dim)
        head = ClassifierHead(encoder.output_size, len(self.labels), m.pooling, self.output_dropout)
        return Net(embedder, encoder, head)

    def collate(self, data: Split, idx: np.ndarray) -> Batch:
        ids, lengths, mask = self.pad_rows([data.cols["ids"].row(i) for i in idx])
        targets = torch.from_numpy(data.flat["target"][idx]) if "target" in data.flat else None
        return Batch(ids, lengths, mask, targets, index=idx)

    def logits(self, net: Net | Ensemble, batch: Batch) -> torch.Tensor:
        """Class scores [B, C] whose softmax is the prediction; for an ensemble the log of the
        members' mean probabilities (so the softmax gives that mean)."""
        if isinstance(net, Ensemble):
            probs = torch.stack([self.logits(m, batch).float().softmax(-1) for m in net.members]).mean(0)
            return probs.log()
        states, _ = net.encode(batch)
        return net.head(states, batch.mask, batch.lengths)

    def loss(self, net: Net, batch: Batch) -> torch.Tensor:
        batch.ids = self.word_dropout(batch.ids, batch.mask)
        return F.cross_entropy(self.logits(net, batch), batch.targets)

    @torch.no_grad()
    def predict_split(self, net: Net, data: Split, device) -> np.ndarray:
        """Class probabilities [N, C] in the split's row order."""
        net.eval()
        probs = np.zeros((len(data), len(self.labels)), dtype=np.float32)
        for batch in self.eval_batches(data):
            probs[batch.index] = self.logits(net, batch.to(device)).float().softmax(-1).cpu().numpy()
        return probs

    def evaluate(self, net: Net, data: Split, device) -> dict:
        from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

        if "target" not in data.flat:
            raise SeqtextError(f"evaluation data has no labels (column {self.recipe.data.label_column!r})")
        probs = self.predict_split(net, data, device)
        gold, pred = data.flat["target"], probs.argmax(1)
        labels = list(range(len(self.labels)))
        p, r, f, support = precision_recall_fscore_support(gold, pred, labels=labels, zero_division=0)
        out = {
            "accuracy": float((gold == pred).mean()),
            "macro_precision": float(p.mean()), "macro_recall": float(r.mean()), "macro_f1": float(f.mean()),
            "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                                 "support": int(support[i])} for i, name in enumerate(self.labels)},
            "confusion_matrix": confusion_matrix(gold, pred, labels=labels).tolist(),
            "examples": len(gold),
        }
        if len(self.labels) == 2 and len(set(gold.tolist())) == 2:
            out["roc_auc"] = float(roc_auc_score(gold, probs[:, 1]))
        return out

    @torch.no_grad()
    def predict(self, net: Net, texts: list[str], device, batch_size: int = 64) -> list[dict]:
        """Label and class probabilities for each text, batched by length."""
        net.eval()
        tokens = self.tokenizer.tokenize_batch(texts)
        max_length = self.recipe.data.max_length
        rows = [np.asarray(truncate(self.vocab.encode(t), max_length) or [self.vocab.unk_id]) for t in tokens]
        order = np.argsort([-len(r) for r in rows], kind="stable")
        results: list[dict] = [{} for _ in texts]
        for start in range(0, len(rows), batch_size):
            idx = order[start: start + batch_size]
            ids, lengths, mask = self.pad_rows([rows[i] for i in idx])
            batch = Batch(ids, lengths, mask).to(device)
            probs = self.logits(net, batch).float().softmax(-1).cpu().tolist()
            for i, p in zip(idx, probs):
                best = int(np.argmax(p))
                results[i] = {"label": self.labels[best], "probs": dict(zip(self.labels, p))}
        return results
