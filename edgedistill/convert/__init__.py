"""Converters: an HF folder to ONNX (optimum-onnx, with KV cache) and GGUF (gguf.GGUFWriter, with
its tokenizer), and ONNX graphs to the fixed shapes NPUs compile. Converters only: quantizing is
quantize/, checking verify/, and the export stage that runs them all export/."""
