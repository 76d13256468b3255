meta:
  id: cardiowatch_ecg_2
  title: "cardiowatch.ecg/2: one ECG chunk from a wearable, binary (int16 samples with a scale)"
  file-extension: cwec
  endian: le
  license: Apache-2.0
doc: |
  Value of a record on the raw ECG topic (CARDIOWATCH_TOPIC_ECG, default cardiowatch.ecg.raw),
  beside cardiowatch.ecg/1 (JSON) on the same topic; key = patient_id, about 1 s of signal per
  message. Little-endian, packed (no alignment padding). Checked by
  streaming.schemas.decode_ecg, which tells the two versions apart by the magic; a message it
  refuses goes to the dead-letter topic with a reason (in brackets below). Besides the `valid`
  constraints here the worker also refuses: a payload over 524288 bytes [oversized_payload];
  one shorter or longer than the header says [bad_payload_length]; ids that are not printable
  UTF-8 [wrong_type]; a Kafka key other than patient_id [key_mismatch]; n_samples above 10 s at
  sample_rate_hz [bad_samples_length]; a non-finite sample_rate_hz or scale_mv. A sample is
  sample_count * scale_mv millivolts.
seq:
  - id: magic
    contents: CWEC
    doc: Payloads that do not start with these 4 bytes are read as cardiowatch.ecg/1 JSON.
  - id: version
    type: u1
    valid: 2
    doc: "[unsupported_schema] otherwise."
  - id: flags
    type: u1
    valid: 0
    doc: Reserved, 0 [unsupported_schema].
  - id: n_leads
    type: u1
    valid: {min: 1, max: 12}
    doc: "[wrong_type] otherwise."
  - id: len_patient_id
    type: u1
    valid: {min: 1, max: 128}
    doc: "[wrong_type] otherwise."
  - id: len_device_id
    type: u1
    valid: {min: 1, max: 128}
    doc: "[wrong_type] otherwise."
  - id: reserved
    type: u1
    valid: 0
    doc: Reserved, 0 [unsupported_schema].
  - id: n_samples
    type: u2
    valid: {min: 1}
    doc: Samples per lead, 1 .. 10 s at sample_rate_hz [bad_samples_length].
  - id: seq
    type: s8
    valid: {min: 0}
    doc: Per-device sequence number, +1 per message of this stream, as in cardiowatch.ecg/1 [bad_seq].
  - id: ts_ms
    type: s8
    valid: {min: 946684800000, max: 4102444800000}
    doc: Event time of the first sample, epoch milliseconds UTC, 2000-01-01..2100-01-01 [bad_timestamp].
  - id: sample_rate_hz
    type: f8
    valid: {min: 50, max: 2000}
    doc: Samples per second per lead [bad_sample_rate].
  - id: scale_mv
    type: f8
    valid: {min: 0.000001, max: 1}
    doc: Millivolts per sample count (0.001 = 1 uV per count) [bad_scale].
  - id: patient_id
    type: str
    size: len_patient_id
    encoding: UTF-8
    doc: Also the Kafka message key, which must equal it. Printable characters only.
  - id: device_id
    type: str
    size: len_device_id
    encoding: UTF-8
    doc: Wearable id. Printable characters only.
  - id: leads
    type: lead
    repeat: expr
    repeat-expr: n_leads
  - id: samples
    type: lead_samples
    repeat: expr
    repeat-expr: n_leads
    doc: Lead after lead, in the order of `leads`.
types:
  lead:
    seq:
      - id: len_name
        type: u1
        valid: {min: 1, max: 32}
        doc: "[wrong_type] otherwise."
      - id: name
        type: str
        size: len_name
        encoding: UTF-8
        doc: Lead name, e.g. MLII, V1, I.
  lead_samples:
    seq:
      - id: counts
        type: s2
        repeat: expr
        repeat-expr: _root.n_samples
