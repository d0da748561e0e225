"""Fine-tuning on private data: the Files API, LoRA fine-tuning jobs in Mistral's
shape (trained on this machine's CPU or GPU, checkpointed, resumed after a
restart), adapters saved in PEFT's layout, and the Batch API over the Files.

Deliberately import-light, like `tramontane.control`: `tramontane.store` imports
`finetune.models` so that the store's metadata knows these tables. Import
`finetune.service` (`FineTuning`, what a server holds), `finetune.api`
(`install`) and `finetune.cli` directly.
"""
