"""Fine-tuning on private data: the Files API, LoRA fine-tuning jobs in Mistral's
shape (trained on this machine's CPU or GPU, checkpointed, resumed after a
restart), adapters saved in PEFT's layout, and the Batch API over the Files.

Import-light, like `tramontane.control`: `tramontane.platform.schema` imports
`finetune.models` for the platform's tables. Import `finetune.service`
(`FineTuning`, what a server holds), `finetune.api` (`routers`),
`finetune.batch_executor` and `finetune.cli` directly.
"""
