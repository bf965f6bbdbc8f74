"""Prompting and scoring for the toy video multiple-choice task."""

import re

from tokcompress.video import sample_clip

LETTERS = "ABCD"


def doc_to_visual(doc):
    return [str(sample_clip(doc["clip"]))]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(doc["options"]))
    post_prompt = (lmms_eval_specific_kwargs or {}).get("post_prompt", "")
    return f"{doc['question']}\n{options}{post_prompt}"


def process_results(doc, results):
    match = re.search(r"\b([A-D])\b", results[0].strip().upper()) or re.match(r"([A-D])", results[0].strip().upper())
    return {"accuracy": float(bool(match) and match.group(1) == doc["answer"])}
