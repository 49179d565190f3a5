#!/usr/bin/env python3
"""A small transformers checkpoint written by transformers itself, for the conversion tests.

    python3 tools/golden/make_hf_fixture.py      # needs torch, transformers, safetensors

Writes tests/golden/hf_tiny_bf16/: LlamaForCausalLM (GQA, untied, llama3 RoPE scaling) saved
with save_pretrained in bfloat16 and sharded (model-0000k-of-0000n.safetensors plus
model.safetensors.index.json), and reference.safetensors with a token batch and the logits
transformers computes from those bf16 weights in float32.
"""
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "hf_tiny_bf16")


def main():
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 32})
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p.float()))
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    model.save_pretrained(OUT, max_shard_size="100KB", safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(OUT, extra)):
            os.remove(os.path.join(OUT, extra))
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    with torch.no_grad():
        logits = model.float()(ids).logits
    save_file({"input_ids": ids.to(torch.int32), "logits": logits.contiguous()},
              os.path.join(OUT, "reference.safetensors"))
    print("wrote", OUT, sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
