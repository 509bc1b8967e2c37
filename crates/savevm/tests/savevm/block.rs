use savevm::block::{self, BlockRecord, BLK_MIG_CHUNK_SIZE};
use savevm::Error;

use crate::{bytes_of, reader, Bytes};

#[test]
fn block_records_round_trip_and_golden() {
    let chunk: Vec<u8> = (0..BLK_MIG_CHUNK_SIZE).map(|i| (i % 251) as u8).collect();
    let bytes = bytes_of(|w| {
        block::write_progress(w, 39);
        block::write_data(w, 2048, "drv0", &chunk);
        block::write_zero(w, 4096, "drv0");
        block::write_eos(w);
    });
    let golden = Bytes::default()
        .be64((39 << 9) | 4)
        .be64((2048 << 9) | 1)
        .cstr("drv0")
        .raw(&chunk)
        .be64((4096 << 9) | 9)
        .cstr("drv0")
        .be64(2)
        .0;
    assert_eq!(bytes, golden);
    let mut r = reader(&bytes);
    assert_eq!(
        block::read_record(&mut r).unwrap(),
        BlockRecord::Progress(39)
    );
    assert_eq!(
        block::read_record(&mut r).unwrap(),
        BlockRecord::Data {
            sector: 2048,
            device: "drv0".into()
        }
    );
    let mut data = vec![0u8; BLK_MIG_CHUNK_SIZE];
    r.get_buffer(&mut data).unwrap();
    assert_eq!(data, chunk);
    assert_eq!(
        block::read_record(&mut r).unwrap(),
        BlockRecord::Zero {
            sector: 4096,
            device: "drv0".into()
        }
    );
    assert_eq!(block::read_record(&mut r).unwrap(), BlockRecord::Eos);

    // write_header is symmetric with read_record.
    for rec in [
        BlockRecord::Progress(100),
        BlockRecord::Eos,
        BlockRecord::Zero {
            sector: 1,
            device: "d".into(),
        },
    ] {
        let b = bytes_of(|w| rec.write_header(w));
        assert_eq!(block::read_record(&mut reader(&b)).unwrap(), rec);
    }
}

#[test]
fn block_unknown_flags() {
    for word in [0u64, 0x10, 0x03, 0x05, (1 << 9) | 2] {
        let b = Bytes::default().be64(word).cstr("d").0;
        assert!(
            matches!(
                block::read_record(&mut reader(&b)),
                Err(Error::UnknownBlockFlags { offset: 0, .. })
            ),
            "{word:#x}"
        );
    }
}
