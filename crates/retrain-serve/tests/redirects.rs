//! Redirect chains that end at the file, and a loop that ends nowhere.

mod common;

use common::{get, request, split_url};
use retrain_serve::{Config, Server};

fn server() -> Server {
    Server::start(Config::new("file.bin", b"the file".to_vec())).expect("starting the server")
}

#[test]
fn a_chain_of_three_redirects_ends_at_the_file() {
    let server = server();
    let mut url = server.redirect_url(3);
    let mut hops = 0;
    let resp = loop {
        let resp = get(&url, &[]);
        if resp.status != 302 {
            break resp;
        }
        hops += 1;
        assert!(hops <= 3, "more than 3 redirects");
        let location = resp.header("location").expect("a Location");
        assert!(location.starts_with(&format!("http://{}/", server.addr())));
        url = location.to_owned();
    };
    assert_eq!(hops, 3);
    assert_eq!(url, server.url());
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"the file");
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [302, 302, 302, 200]);
}

#[test]
fn zero_hops_is_the_file_itself() {
    let server = server();
    assert_eq!(server.redirect_url(0), server.url());
}

#[test]
fn head_of_a_redirect_has_its_location_and_no_body() {
    let server = server();
    let (addr, path) = split_url(&server.redirect_url(1));
    let resp = request(addr, "HEAD", &path, &[]);
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header("location"), Some(server.url().as_str()));
    assert!(resp.body.is_empty());
}

#[test]
fn the_loop_redirects_to_itself() {
    let server = server();
    let url = server.loop_url();
    for _ in 0..20 {
        let resp = get(&url, &[]);
        assert_eq!(resp.status, 302);
        assert_eq!(resp.header("location"), Some(url.as_str()));
    }
}
