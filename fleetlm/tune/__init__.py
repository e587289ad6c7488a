"""LoRA experts on a shared base: supervised fine-tuning (`fleet tune sft`) and prompt
distillation (`fleet tune distill`). Training uses `transformers` + PEFT; adapters are saved
in PEFT format so the engine's LoRA pool (and PEFT itself) can load them."""
