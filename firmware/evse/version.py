# Firmware version: reported on the Charger State page, in BootNotification and in .bin headers.
VERSION = "1.0.0"
