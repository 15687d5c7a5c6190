//! A filesystem that can be frozen (`fsfreeze` of a loop-mounted ext4):
//! writers block in uninterruptible sleep (D state), and SIGKILL cannot
//! end them until it is thawed, as on hung shared storage. Thawed and
//! unmounted on drop.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::daemons::{sh, Scratch};

pub struct Frozen {
    pub mnt: PathBuf,
    frozen: bool,
}

impl Frozen {
    pub fn new(s: &Scratch) -> Frozen {
        let img = s.0.join("fs.img");
        let mnt = s.0.join("frozen");
        fs::create_dir_all(&mnt).unwrap();
        sh(&format!(
            "truncate -s 16M '{0}' && mkfs.ext4 -q -F '{0}' && mount -o loop '{0}' '{1}'",
            img.display(),
            mnt.display()
        ));
        Frozen { mnt, frozen: false }
    }

    pub fn freeze(&mut self) {
        sh(&format!("fsfreeze -f '{}'", self.mnt.display()));
        self.frozen = true;
    }

    pub fn thaw(&mut self) {
        if self.frozen {
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.mnt).status();
            self.frozen = false;
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
