# EV PLUS controller, networked STM32 variant: the pin map (one table: a hardware revision
# changes this file only). Board: ST NUCLEO-H743ZI2 (STM32H743ZI, 400 MHz, Ethernet on the
# board), the EV PLUS front end on its Arduino/Zio headers (CN7-CN10). docs/hardware.md
# has the wiring.
#
# Pins are named as the Nucleo's headers name them (A0-A5, D0-D72: MicroPython's
# ports/stm32/boards/NUCLEO_H743ZI2/pins.csv), the MCU pin beside each. Use these names:
# the port looks a name up among the board's names first, so "A3" is PB1 here, not PA3.
# Taken by the Nucleo and its MicroPython image, so not used: Ethernet RMII (PA1, PA2,
# PA7, PB13, PC1, PC4, PC5, PG11, PG13), USB (PA9-PA12), the ST-LINK REPL UART3 (PD8,
# PD9), LEDs (PB0, PE1, PB14), the user button (PC13, read at reset), the SD card
# interface and its detect pin (PC8-PC12, PD2, PG2), SWD (PA13, PA14).
from micropython import const

# The model this controller is built into (hardware facts, not settings: docs/hal.md).
TETHERED = const(0)  # 1: tethered cable, no socket lock wired (hw.lock.fitted False)
RS485 = const(1)  # 0: no external-meter RS-485 transceiver fitted (hw.rs485 None)

# Control pilot: TIM1 CH1 drives the +/-12 V stage; TIM1's update and CH2 compare
# interrupts (hard) sample the high and low plateaus. Every ADC pin has ADC1, the one
# converter pyb.ADC uses on the H7 (A5, PF10, is ADC3 only).
CP_TIMER = const(1)
CP_CHANNEL = const(1)
CP_SAMPLE_CHANNEL = const(2)  # OC_TIMING, no pin: fires mid low plateau
CP_PWM = "D6"  # PE9, TIM1_CH1
CP_ADC = "A0"  # PA3
PP_ADC = "A1"  # PC0
NPE_ADC = "A2"  # PC3
T_RELAY_ADC = "A3"  # PB1
T_SOCKET_ADC = "A4"  # PC2
T_ENV_ADC = "D32"  # PA0 (CN10)

# Power path and protection
RELAY1 = "D3"  # PE13
RELAY2 = "D4"  # PE14
RELAY1_FB = "D2"  # PG14; auxiliary contacts to GND, pull-up: 0 = closed
RELAY2_FB = "D5"  # PE11
LOCK_A = "D7"  # PG12
LOCK_B = "D8"  # PF3
LOCK_FB = "D10"  # PD14; 1 = engaged
RCD_FAULT = "D30"  # PD11; RDC-DD fault output, active high (hard IRQ, EXTI11)
RCD_TEST = "D31"  # PE2
PE_OK = "D50"  # PG3; PE continuity opto, 1 = continuity

# Fan, HMI
FAN_TIMER = const(4)  # TIM4 CH4, 25 kHz
FAN_CHANNEL = const(4)
FAN_PWM = "D9"  # PD15
FAN_TACH = "D29"  # PD12; hard IRQ counter (EXTI12), 2 pulses per revolution
NEOPIXEL = "D27"  # PB2
BELT_LEDS = const(24)
TAP_LIGHT = "D37"  # PE15
BUZZER = "D39"  # PE12
BUTTON = "D40"  # PE10; to GND, pull-up (the Nucleo's blue button is active high)
I2C_ID = const(1)  # D15 (PB8) SCL, D14 (PB9) SDA: LCD 1602 with PCF8574 backpack
LCD_ADDR = const(0x27)

# RC522 on SPI3, the bus the port defines for this board: D23 (PB3) SCK, D25 (PB4) MISO,
# D22 (PB5) MOSI
SPI_ID = const(3)
SPI_BAUD = const(4_000_000)
RFID_CS = "D24"  # PA4
RFID_RST = "D26"  # PG6

# FDCAN1 on D67 (PD0, RX) / D66 (PD1, TX), transceiver SN65HVD230
CAN_BUS = const(1)
CAN_BITRATE = const(125_000)
CAN_SAMPLE_PCT = const(80)  # the port computes the bit timing from its FDCAN clock

# Serial buses
RS485_UART = const(2)  # D53 (PD5) TX, D52 (PD6) RX
RS485_DE = "D54"  # PD4
RS485_BAUD = const(9600)
METER_UART = const(6)  # D16 (PC6) TX, D21 (PC7) RX, internal MID meter
METER_BAUD = const(9600)

# Calibration of the analogue front end (pyb.ADC reads 12 bits, 3.3 V reference)
CP_ZERO_MV = const(1600)
CP_GAIN_X1000 = const(8889)
VREF_MV = const(3300)
PP_PULLUP_OHM = const(1000)
NPE_MV_PER_V = const(33)
