"""Training forwards (`labels=`): a position the language model no longer computes - a dropped video token, a
prompt's padding - has logits of zeros, so it predicts nothing. HF shifts the labels by one inside the loss, so
the label after each such position is ignored (-100), in a copy of the caller's labels: otherwise the token
after a video, whose label is live, would be scored against zeros (log of the vocabulary added to the loss)."""

from __future__ import annotations

import torch

IGNORED = -100  # HF's ignore_index


class Labels:
    """The Engine's hooks on the model that computes the loss (a mixin, sharing its per-thread state)."""

    def _hold_labels(self, module, args, kwargs):
        """A forward given labels while compressing gets a copy, for the prefill to edit."""
        labels = kwargs.get("labels")
        self._local.labels = None
        if not self.active or not isinstance(labels, torch.Tensor):
            return None
        kwargs["labels"] = self._local.labels = labels.clone()
        return args, kwargs

    def _release_labels(self, module, args, output):
        self._local.labels = None

    def _ignore_uncomputed(self, origin: torch.Tensor, full_length: int) -> None:
        """After a prefill that computed only the positions `origin` (`computed_positions`): the held labels after
        every other position are ignored."""
        labels = getattr(self._local, "labels", None)
        if labels is None or labels.shape != (len(origin), full_length):
            return
        computed = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
        origin = origin.to(labels.device)
        rows, slots = (origin >= 0).nonzero(as_tuple=True)
        computed[rows, origin[rows, slots]] = True
        labels[:, 1:].masked_fill_(~computed[:, :-1], IGNORED)
