"""Data: tokenizer, corpora, packing, the RLHF task and the SFT / RM / PPO datasets.

corpus.py   local text / JSONL / parquet files (or the embedded corpus) read through ``datasets``,
            bad rows counted per reason (report.py)
tokenizer.py  a byte-level BPE trained on the corpus and cached, or a local HF tokenizer
packing.py  documents → one token stream with EOS after each → blocks of seq_len + 1
pretrain.py the weighted mixture (``interleave_datasets``), held-out split, resumable batches
task.py     the word-list task and its deterministic oracle (pure Python)
labeller.py ``data.labeller``: the oracle, none, or a user's ``module:function`` (pure Python)
phase_data.py  your SFT / RM / PPO files (JSONL, parquet, save_to_disk) → the phases' files
taskfiles.py / rlhf.py  reading the SFT / RM / PPO JSONL files; tensors and collators
format.py   how a prompt and a response become one token sequence (``data.template``; shared by all three)
curation/   GPT-3's quality filter, MinHash dedup and contamination check, before the split and mixture

Nothing here is imported by ``orchestrator.data`` itself, so ``config`` may import ``task``
without pulling in torch or datasets.
"""
