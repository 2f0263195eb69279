# EV PLUS controller, ESP32 variant: the pin map (one table: a hardware revision changes
# this file only). Module: ESP32-S3-WROOM-1-N16R8 (GPIO 35-37 belong to its octal PSRAM,
# GPIO 19/20 to the native USB that carries the REPL). docs/hardware.md has the wiring.
from micropython import const

# The model this controller is built into (hardware facts, not settings: docs/hal.md).
TETHERED = const(0)  # 1: tethered cable, no socket lock wired (hw.lock.fitted False)
RS485 = const(1)  # 0: no external-meter RS-485 transceiver fitted (hw.rs485 None)

# Control pilot and proximity (ADC1 only: ADC2 is unusable while WiFi runs)
CP_PWM = const(8)  # LEDC 1 kHz -> op-amp +/-12 V stage -> 1 kohm R1 -> CP
CP_ADC = const(1)  # CP level shifter: pilot -12..+12 V -> 0.25..2.95 V
PP_ADC = const(2)  # PP-PE resistor against 1 kohm pull-up to 3.3 V
NPE_ADC = const(4)  # rectified N-PE voltage, 33 mV per volt
T_RELAY_ADC = const(5)  # NTC 10k B3950, 10 kohm pull-up
T_SOCKET_ADC = const(6)
T_ENV_ADC = const(7)

# Power path and protection
RELAY1 = const(9)  # contactor 1 (L1+L2) driver, active high
RELAY2 = const(10)  # contactor 2 (L3+N) driver, active high
RELAY1_FB = const(11)  # auxiliary contact to GND, pull-up: 0 = closed
RELAY2_FB = const(12)
LOCK_FB = const(13)  # lock pin switch: 1 = engaged (pull-down)
RCD_FAULT = const(14)  # RDC-DD fault output, active high; also gates relay drive in hardware

# Fan, HMI
FAN_PWM = const(15)  # 25 kHz PWM to the 4-wire fan
FAN_TACH = const(16)  # open collector, 2 pulses per revolution, pull-up
NEOPIXEL = const(17)  # WS2812B chain: BELT_LEDS belt pixels, then wifi, plug, charging, fault
BELT_LEDS = const(24)
BUTTON = const(0)  # WiFi button (also BOOT: held at reset it enters the ROM loader)
I2C_SDA = const(18)  # LCD 1602 with PCF8574 backpack at LCD_ADDR
I2C_SCL = const(21)
LCD_ADDR = const(0x27)

# SPI bus shared by the RC522, the MCP2515 and the 74HC595 output latch (mode 0)
SPI_ID = const(2)
SPI_BAUD = const(4_000_000)
SPI_SCK = const(38)
SPI_MOSI = const(39)
SPI_MISO = const(40)
RFID_CS = const(41)
CAN_CS = const(42)
RFID_RST = const(45)  # strapping pin: its boot pull-down keeps the RC522 in reset
SR_LATCH = const(46)  # 74HC595 RCLK (strapping pin, idle low)
CAN_XTAL_MHZ = const(8)
CAN_BITRATE = const(125_000)

# 74HC595 outputs
SR_LOCK_A = const(0)  # lock motor H-bridge inputs
SR_LOCK_B = const(1)
SR_RCD_TEST = const(2)  # RDC-DD self-test input
SR_BUZZER = const(3)  # active piezo via NPN
SR_TAP_LIGHT = const(4)  # AREA3 LEDs via MOSFET

# Serial buses
RS485_UART = const(2)  # external meter bus
RS485_TX = const(47)
RS485_RX = const(48)
RS485_DE = const(3)
RS485_BAUD = const(9600)
METER_UART = const(1)  # internal MID meter (its own RS-485 transceiver, auto direction)
METER_TX = const(43)
METER_RX = const(44)
METER_BAUD = const(9600)

# Calibration of the analogue front end (bench-trimmed per hardware revision)
CP_ZERO_MV = const(1600)  # ADC millivolts at 0 V on the pilot
CP_GAIN_X1000 = const(8889)  # pilot mV per ADC mV, x1000 (24 V over 2.7 V)
VREF_MV = const(3300)
PP_PULLUP_OHM = const(1000)
NPE_MV_PER_V = const(33)
