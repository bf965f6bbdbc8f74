"""dots3 Note (`dots3_note`, rednote hi lab): a packed Qwen2-VL-like tower (14-px patches, one frame a unit,
attention inside each frame, 2-D RoPE, expert MLPs in its later blocks) whose merger makes each 2 × 2 patches a
token, frame-major in raster order, one run of video tokens per video; 1-D positions. Its decoder is DeepSeek-style:
multi-head latent attention (MLA; see `latent_attention`) with a sigmoid gate on each head's output, mixture-of-experts
MLPs, and two layer types with their own shapes and RoPE - sliding-window layers and "indexed" global ones, where a
DeepSeek sparse-attention (DSA) indexer picks each query's `index_topk` keys from its own cached keys.

Where it departs from the stock forward: none beyond the engine's rules. The indexer runs on the tokens that remain,
as in the LLM fed only those, and without proportional attention's key bias (tome's log-size, meant for the
softmax); while decoding attends to selected visual KV entries (dycoke), the indexer picks among the same entries.
In-LLM scores are dense: a query's attention over every key, not restricted to the indexer's top-k (with 2,048 keys
a query, the published configuration, the indexer itself reads a long video's tokens only in part, and a score of
zero would not rank the rest)."""

from __future__ import annotations

from .latent_attention import LatentAttention
from .qwen2_vl import Qwen2VLAdapter


class Dots3NoteAdapter(LatentAttention, Qwen2VLAdapter):
    model_type = "dots3_note"
    mrope = False

    def mask_scorers(self):
        return [layer.self_attn.indexer for layer in self.layers if layer.self_attn.indexer is not None]
