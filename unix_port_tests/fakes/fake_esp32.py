# Fake `esp32` (the board uses machine.Counter first; nothing else from here).
