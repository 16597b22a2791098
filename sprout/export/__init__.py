"""Export helpers: fold LoRA adapters into a standalone model (`sprout export merge-lora`)."""
