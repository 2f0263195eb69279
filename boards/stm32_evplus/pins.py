# EV PLUS controller, STM32 variant: the pin map (one table: a hardware revision changes
# this file only). MCU: STM32F405RG (pyboard-class MicroPython build, 168 MHz).
# docs/hardware.md has the wiring.
from micropython import const

# The model this controller is built into (hardware facts, not settings: docs/hal.md).
TETHERED = const(0)  # 1: tethered cable, no socket lock wired (hw.lock.fitted False)
RS485 = const(1)  # 0: no external-meter RS-485 transceiver fitted (hw.rs485 None)

# Control pilot: TIM1 CH1 on PA8 drives the +/-12 V stage; TIM1's update and CH2 compare
# interrupts (hard) sample the high and low plateaus.
CP_TIMER = const(1)
CP_CHANNEL = const(1)
CP_SAMPLE_CHANNEL = const(2)  # OC_TIMING, no pin: fires mid low plateau
CP_PWM = "A8"
CP_ADC = "C0"
PP_ADC = "C1"
NPE_ADC = "C2"
T_RELAY_ADC = "C3"
T_SOCKET_ADC = "A4"
T_ENV_ADC = "A5"

# Power path and protection
RELAY1 = "B0"
RELAY2 = "B1"
RELAY1_FB = "C8"  # auxiliary contacts to GND, pull-up: 0 = closed
RELAY2_FB = "C9"
LOCK_A = "B4"
LOCK_B = "B5"
LOCK_FB = "C10"  # 1 = engaged
RCD_FAULT = "C11"  # RDC-DD fault output, active high (hard IRQ)
RCD_TEST = "C12"
PE_OK = "D2"  # PE continuity opto, 1 = continuity

# Fan, HMI
FAN_TIMER = const(2)  # TIM2 CH2 on PB3, 25 kHz
FAN_CHANNEL = const(2)
FAN_PWM = "B3"
FAN_TACH = "A10"  # hard IRQ counter, 2 pulses per revolution
NEOPIXEL = "A15"
BELT_LEDS = const(24)
TAP_LIGHT = "C5"
BUZZER = "B10"
BUTTON = "C13"  # to GND, pull-up
I2C_ID = const(1)  # PB6 SCL, PB7 SDA: LCD 1602 with PCF8574 backpack
LCD_ADDR = const(0x27)

# RC522 on SPI2 (PB13 SCK, PB14 MISO, PB15 MOSI)
SPI_ID = const(2)
SPI_BAUD = const(4_000_000)
RFID_CS = "B12"
RFID_RST = "C4"

# CAN1 on PB8 (RX) / PB9 (TX), transceiver SN65HVD230
CAN_BUS = const(1)
CAN_BITRATE = const(125_000)

# Serial buses
RS485_UART = const(2)  # PA2 TX, PA3 RX
RS485_DE = "A1"
RS485_BAUD = const(9600)
METER_UART = const(6)  # PC6 TX, PC7 RX, internal MID meter
METER_BAUD = const(9600)

# Calibration of the analogue front end (12-bit ADC, 3.3 V reference)
CP_ZERO_MV = const(1600)
CP_GAIN_X1000 = const(8889)
VREF_MV = const(3300)
PP_PULLUP_OHM = const(1000)
NPE_MV_PER_V = const(33)
