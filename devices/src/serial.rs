//! COM1: a 16550A UART (the `vm-superio` model) at I/O ports 0x3f8-0x3ff, raising IOAPIC
//! pin 4 (edge-triggered, one pulse per interrupt condition).
//!
//! Output goes to any [`Write`]; give it a [`crate::output::ConsoleOutput`] so that a
//! stalled terminal never blocks the vCPU. Input is pushed by the caller (a stdin thread)
//! with [`Serial::enqueue_input`], which takes at most the free FIFO space (64 bytes): the
//! caller keeps the rest and waits for space with [`Serial::wait_for_input_space`], so
//! input is never buffered without bound when the guest does not read it.
use crate::bus::BusDevice;
use crate::ioapic::Ioapic;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;

/// COM1's base I/O port.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of I/O ports the UART decodes.
pub const COM1_PORT_COUNT: u64 = 8;
/// COM1's IOAPIC pin (GSI) and ISA IRQ.
pub const COM1_IRQ: usize = 4;

/// The UART's interrupt output: an edge on an IOAPIC pin.
pub struct IoapicIrq {
    ioapic: Arc<Ioapic>,
    pin: usize,
}

impl IoapicIrq {
    pub fn new(ioapic: Arc<Ioapic>, pin: usize) -> Self {
        IoapicIrq { ioapic, pin }
    }
}

impl Trigger for IoapicIrq {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.ioapic.pulse_irq(self.pin);
        Ok(())
    }
}

type Uart<W> = vm_superio::Serial<IoapicIrq, NoEvents, W>;

/// The UART as a port-I/O bus device.
pub struct Serial<W: Write + Send> {
    uart: Mutex<Uart<W>>,
    /// Signalled when the guest reads the receive buffer (FIFO space may have appeared).
    space: Condvar,
}

impl<W: Write + Send> Serial<W> {
    /// A UART raising `pin` on `ioapic` ([`COM1_IRQ`] for COM1), writing to `out`.
    pub fn new(ioapic: Arc<Ioapic>, pin: usize, out: W) -> Self {
        Serial { uart: Mutex::new(Uart::new(IoapicIrq::new(ioapic, pin), out)), space: Condvar::new() }
    }

    fn lock(&self) -> MutexGuard<'_, Uart<W>> {
        self.uart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Free space in the receive FIFO.
    pub fn input_space(&self) -> usize {
        self.lock().fifo_capacity()
    }

    /// Queues terminal input for the guest: takes at most the free FIFO space and returns
    /// how many bytes it took (0 when full, or in loopback mode). The caller keeps the rest.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let mut uart = self.lock();
        let n = bytes.len().min(uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(taken) => taken,
            Err(e) => {
                log::warn!("serial: input refused: {e:?}");
                0
            }
        }
    }

    /// Blocks until the receive FIFO has space or `timeout` passes; returns the space.
    pub fn wait_for_input_space(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut uart = self.lock();
        loop {
            let space = uart.fifo_capacity();
            let now = Instant::now();
            if space > 0 || now >= deadline {
                return space;
            }
            uart = self.space.wait_timeout(uart, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    /// Byte registers: a wider access reads the register at `offset` into the first byte.
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) else {
            return;
        };
        if u64::from(offset) >= COM1_PORT_COUNT {
            return;
        }
        let mut uart = self.lock();
        *first = uart.read(offset);
        if offset == 0 && uart.fifo_capacity() > 0 {
            self.space.notify_all();
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if u64::from(offset) >= COM1_PORT_COUNT {
            return;
        }
        if let Err(e) = self.lock().write(offset, value) {
            log::debug!("serial: write to port offset {offset}: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::{InterruptSink, IoapicInterrupt};

    #[derive(Default)]
    struct Sink(Mutex<Vec<IoapicInterrupt>>);
    impl InterruptSink for Sink {
        fn deliver(&self, irq: IoapicInterrupt) -> bool {
            self.0.lock().unwrap().push(irq);
            true
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;

    fn com1() -> (Serial<Captured>, Arc<Sink>, Captured) {
        let sink = Arc::new(Sink::default());
        let ioapic = Arc::new(Ioapic::new(sink.clone()));
        // Pin 4: edge, physical, vector 0x24, to APIC 0, unmasked.
        ioapic.write(0, &[0x18]);
        ioapic.write(0x10, &0x24u32.to_le_bytes());
        let out = Captured::default();
        (Serial::new(ioapic, COM1_IRQ, out.clone()), sink, out)
    }

    fn inb(s: &Serial<Captured>, port: u64) -> u8 {
        let mut b = [0u8];
        s.read(port, &mut b);
        b[0]
    }

    #[test]
    fn output_reaches_the_writer_and_lsr_is_sane() {
        let (s, _, out) = com1();
        // THR empty and transmitter empty, as Linux's probe expects.
        assert_eq!(inb(&s, LSR) & 0x60, 0x60);
        for &b in b"hi\n" {
            s.write(DATA, &[b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Out-of-range offsets and empty accesses are ignored.
        s.write(8, &[1]);
        s.write(u64::MAX, &[1]);
        s.write(DATA, &[]);
        let mut empty = [];
        s.read(DATA, &mut empty);
        assert_eq!(inb(&s, 9), 0);
    }

    #[test]
    fn input_raises_irq4_and_fifo_pushes_back() {
        let (s, sink, _) = com1();
        s.write(IER, &[0x01]); // Receive-data interrupt.
        let input: Vec<u8> = (0..100).collect();
        let space = s.input_space();
        assert_eq!(space, 64);
        assert_eq!(s.enqueue_input(&input), 64, "only the free FIFO space is taken");
        assert_eq!(s.enqueue_input(&input[64..]), 0, "full: refused");
        assert_eq!(s.input_space(), 0);
        assert_eq!(s.wait_for_input_space(Duration::ZERO), 0);
        let irqs = sink.0.lock().unwrap().clone();
        assert_eq!(irqs.len(), 1);
        assert_eq!(irqs[0].vector, 0x24);
        // The guest handles it: IIR says receive data, then it reads two bytes.
        assert_eq!(inb(&s, IIR) & 0x0f, 0x04);
        assert_eq!(inb(&s, LSR) & 1, 1, "data ready");
        assert_eq!(inb(&s, DATA), 0);
        assert_eq!(inb(&s, DATA), 1);
        assert_eq!(s.wait_for_input_space(Duration::ZERO), 2);
        assert_eq!(s.enqueue_input(&input[64..]), 2);
        for expect in 2..66u8 {
            assert_eq!(inb(&s, DATA), expect);
        }
        assert_eq!(inb(&s, LSR) & 1, 0, "drained");
    }

    #[test]
    fn a_waiting_stdin_thread_wakes_when_the_guest_reads() {
        let (s, _, _) = com1();
        let s = Arc::new(s);
        assert_eq!(s.enqueue_input(&[b'a'; 64]), 64);
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait_for_input_space(Duration::from_secs(60)))
        };
        assert_eq!(inb(&s, DATA), b'a');
        assert_eq!(waiter.join().unwrap(), 1);
    }
}
