#![allow(clippy::unwrap_used, clippy::expect_used)]
use tests::lab::{Lab, Nat};
#[test]
fn dbg_sym_to_open() {
    let Some(mut lab) = Lab::new("dbg") else {
        return;
    };
    lab.start_server();
    let callee = lab.site(Nat::Open, 1);
    let caller = lab.site(Nat::Symmetric, 1);
    let (mut l, _) = lab.listen("open", &callee.hosts[0], &[]);
    let mut p = lab.ping("sym", &caller.hosts[0], "open", 15, &[]);
    let _ = p.wait_exit(std::time::Duration::from_secs(30));
    println!("CALLER:\n{}", p.log());
    l.kill();
    println!("CALLEE:\n{}", l.log());
}
