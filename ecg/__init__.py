"""The ECG data layer: reading every format, leads, preparation, and the stored-record rules."""
