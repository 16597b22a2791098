"""Data: reading and validating datasets, built-in corpora, pre-tokenized shards, torch datasets."""

from sprout.data.datasets import IGNORE_INDEX, PretrainDataset, SFTDataset, pack_best_fit
from sprout.data.readers import KINDS, DataError, ReadStats, data_files, read_records
from sprout.data.tokenized import tokenize_pretrain, tokenize_sft

__all__ = [
    "IGNORE_INDEX",
    "KINDS",
    "DataError",
    "PretrainDataset",
    "ReadStats",
    "SFTDataset",
    "data_files",
    "pack_best_fit",
    "read_records",
    "tokenize_pretrain",
    "tokenize_sft",
]
