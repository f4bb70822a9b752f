"""Tiny models for the one-shot tests, with the outlier features of trained LLMs (norm weights of
very different sizes), without which Wanda's activation term would carry no information."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, outliers: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    ))
    if outliers:
        g = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.data = torch.exp(torch.randn(p.shape, generator=g))
    return model.eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0)).eval()


def tiny_bert_encoder(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, num_labels=2,
    )).eval()


def token_batches(n: int = 4, batch: int = 4, length: int = 64, vocab: int = 128, seed: int = 100) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (batch, length), generator=g)} for _ in range(n)]


def relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).detach().pow(2).sum() / reference.detach().pow(2).sum())
