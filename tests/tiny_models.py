"""Tiny randomly initialised DNA models built offline and saved with save_pretrained."""

import itertools
from pathlib import Path


def make_char_bert(path: Path, max_positions: int = 64) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "A", "C", "G", "T", "N"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_positions)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=max_positions, pad_token_id=0)
    model = BertModel(cfg, add_pooling_layer=False)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def make_nt_like_esm(path: Path) -> Path:
    """ESM config shaped like Nucleotide Transformer v2: 6-mer vocabulary, rotary positions."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    path.mkdir(parents=True, exist_ok=True)
    tokens = ["<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>"]
    tokens += ["".join(p) for p in itertools.product("ACGT", repeat=6)] + list("ACGTN")
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tok = EsmTokenizer(vocab_file=str(path / "vocab.txt"), model_max_length=64)
    torch.manual_seed(0)
    cfg = EsmConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=66, position_embedding_type="rotary",
                    pad_token_id=1, mask_token_id=2, token_dropout=False, emb_layer_norm_before=False,
                    tie_word_embeddings=False)
    EsmForMaskedLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path
