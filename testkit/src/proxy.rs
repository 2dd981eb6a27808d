//! A TCP forwarder between a client and a server, whose connections a test can cut: the client
//! sees its connection drop while the server (a broker keeping a persistent session) stays up.
//! Plain threads, so it works under any runtime, paused clocks included.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// Forwards 127.0.0.1:[`port`](Self::port) to a server; stops accepting when dropped.
pub struct TcpProxy {
    port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
    listener: TcpListener,
}

impl TcpProxy {
    /// Forwards connections made to a free port to `127.0.0.1:target`.
    pub fn start(target: u16) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(Mutex::new(Vec::new()));
        let accept = listener.try_clone().unwrap();
        let conns = Arc::clone(&open);
        thread::spawn(move || {
            for client in accept.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut conns = conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        TcpProxy {
            port,
            open,
            listener,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection (both ends); new ones are still forwarded.
    pub fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        // Wakes the accept loop, which then fails on the closed listener and ends.
        let _ = self.listener.set_nonblocking(true);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let _: io::Result<u64> = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
