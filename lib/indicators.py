# The indicator vocabulary of docs/hal.md (`belt`, `leds`): the colours, patterns and LED
# names the application sets, and what every board stores as their index here.
COLOURS = ("white", "green", "blue", "red", "off")
PATTERNS = ("steady", "slow", "fast")
LED_NAMES = ("wifi", "plug", "charging", "fault")
