//! TTYs: runc makes the pseudo-terminal inside the container and sends its
//! master end over the `--console-socket` (SCM_RIGHTS); whoever holds the
//! container's stdio (the shim, or the agent for an exec) receives it here.

use std::{
    fs::File,
    io::{self, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{AsFd, OwnedFd},
};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};

/// Receives the one file descriptor runc sends on an accepted console
/// socket connection.
pub fn receive_fd(conn: impl AsFd) -> io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 4096];
    recvmsg(
        conn.as_fd(),
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut got = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for fd in fds {
                got.get_or_insert(fd);
            }
        }
    }
    got.ok_or_else(|| io::Error::other("the console socket peer sent no file descriptor"))
}

/// Sets the window size of a terminal (the master end).
pub fn resize(master: &File, rows: u16, cols: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .map_err(io::Error::from)
}
